//! Creates the cluster's topics with one partition per shard, or checks that existing ones
//! have exactly that many (a shard is a partition; a different count would move entities).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::BusError;

/// Makes sure each of `topics` exists with `partitions` partitions.
pub async fn ensure(
    config: &rdkafka::ClientConfig,
    topics: &[String],
    partitions: u32,
    replication: i32,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                partitions as i32,
                TopicReplication::Fixed(replication.max(1)),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(t) => tracing::info!(topic = %t, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(BusError::Topic(format!("creating topic {t}: {code}")));
            }
        }
    }
    // Check what is there now (a topic made earlier, by another node or by hand).
    let probe: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(config.create()?);
    for t in topics {
        let mut found = 0;
        for _ in 0..50 {
            let (p, topic) = (probe.clone(), t.clone());
            let meta = tokio::task::spawn_blocking(move || {
                p.fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .find(|m| m.name() == topic)
                            .map_or(0, |m| m.partitions().len())
                    })
            })
            .await
            .map_err(|e| BusError::Topic(format!("metadata task: {e}")))??;
            found = meta;
            if found > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if found != partitions as usize {
            return Err(BusError::Topic(format!(
                "topic {t} has {found} partitions, but shards.count is {partitions}: a shard \
                 is a partition, so they must match (delete the topic, or set shards.count)"
            )));
        }
    }
    Ok(())
}
