//! The routing table and the wire form of routed messages.
//!
//! `routes!` is the one list of which message goes to which kind of entity, what it answers,
//! and whether delivering it twice is harmless. From it come the `Routed` impls the router
//! uses on this node and the `Command` enum that carries a message to the node owning its
//! entity's shard, where `Command::deliver` hands it to the local shard.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::router::Router;
use crate::actors::merchant::MerchantActor;
use crate::actors::order::OrderActor;
use crate::actors::rider::RiderActor;
use crate::actors::zone::ZoneActor;
use crate::error::{Error, Result};
use crate::messages::*;
use crate::model::{Order, Rider};

/// A message addressed to one entity by id.
pub trait Routed:
    actix::Message<Result = Result<<Self as Routed>::Reply>>
    + Clone
    + Serialize
    + Send
    + Sized
    + 'static
{
    /// What a successful reply carries.
    type Reply: Serialize + for<'de> Deserialize<'de> + Send + 'static;
    /// The kind of actor that handles it.
    type Actor: crate::actors::Entity
        + actix::Handler<Self>
        + actix::Handler<crate::actors::shard::Traced<Self>>;
    /// Delivering it twice has the effect of delivering it once (reads, and orders whose id
    /// and request hash make a second attempt a replay), so a forward whose outcome is unknown
    /// may be sent again.
    const RETRY_SAFE: bool;
    /// It creates its entity: an actor it starts need not read the store first.
    const CREATES: bool = false;
    /// Its name, for spans and logs.
    const NAME: &'static str;
    /// The wire form.
    fn into_command(self) -> Command;
}

macro_rules! routes {
    ($($msg:ident => $reply:ty, $actor:ty, $retry:expr $(, creates $creates:expr)?;)*) => {
        /// A routed message in wire form, tagged with its name.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "msg", content = "body")]
        pub enum Command {
            $(
                #[allow(missing_docs)]
                $msg($msg),
            )*
        }

        $(
            impl Routed for $msg {
                type Reply = $reply;
                type Actor = $actor;
                const RETRY_SAFE: bool = $retry;
                $(const CREATES: bool = $creates;)?
                const NAME: &'static str = stringify!($msg);
                fn into_command(self) -> Command {
                    Command::$msg(self)
                }
            }

            impl actix::Handler<crate::actors::shard::Traced<$msg>> for $actor {
                type Result = <$actor as actix::Handler<$msg>>::Result;

                fn handle(
                    &mut self,
                    t: crate::actors::shard::Traced<$msg>,
                    ctx: &mut <Self as actix::Actor>::Context,
                ) -> Self::Result {
                    // The handler (and what it logs, and the futures it instruments) runs in
                    // the command's span.
                    let _in_span = t.span.enter();
                    <Self as actix::Handler<$msg>>::handle(self, t.msg, ctx)
                }
            }
        )*

        impl Command {
            /// Delivers to entity `id` on this node only (a node that does not own the shard
            /// answers `NotOwner`, so a stale sender looks again rather than bouncing the
            /// message around); the reply in wire form.
            pub fn deliver(self, router: Router, id: String) -> BoxFuture<'static, Result<serde_json::Value>> {
                match self {
                    $(
                        Command::$msg(m) => Box::pin(async move {
                            let reply = router.send_here(&id, m).await?;
                            serde_json::to_value(reply)
                                .map_err(|e| Error::Unavailable(format!("encoding a reply: {e}")))
                        }),
                    )*
                }
            }

            /// Routes it wherever its entity's shard is served (waiting out a move), dropping
            /// the reply: a notification that reached a node which does not serve its shard.
            pub fn route(self, router: Router, id: String) -> BoxFuture<'static, Result<()>> {
                match self {
                    $(
                        Command::$msg(m) => Box::pin(async move {
                            router.send(&id, m).await.map(|_| ())
                        }),
                    )*
                }
            }

            /// Hands it to the local shard without waiting (the shard serves here).
            pub fn notify_here(self, router: &Router, id: &str) {
                match self {
                    $( Command::$msg(m) => router.notify_here(id, m), )*
                }
            }

            /// The message's name, for logs and metrics.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Command::$msg(_) => stringify!($msg), )*
                }
            }
        }
    };
}

routes! {
    // orders
    PlaceOrder => Placed, OrderActor, true, creates true;
    GetOrder => Arc<Order>, OrderActor, true;
    ChangeOrder => Arc<Order>, OrderActor, false;
    CrashOrder => Arc<Order>, OrderActor, false;
    StartPayment => PaymentStarted, OrderActor, true;
    PaymentNotice => bool, OrderActor, true;
    // merchants
    RegisterMerchant => MerchantView, MerchantActor, false;
    SetMenu => MerchantView, MerchantActor, false;
    SetOpen => MerchantView, MerchantActor, false;
    GetMerchant => MerchantView, MerchantActor, true;
    ReserveStock => Reservation, MerchantActor, false;
    ReserveAndPlace => PlaceOutcome, MerchantActor, false;
    UnreserveStock => (), MerchantActor, false;
    SettleReservation => (), MerchantActor, false;
    StockFence => i64, MerchantActor, true;
    RestockItems => (), MerchantActor, false;
    CommitWrites => Option<crate::store::Refusal>, MerchantActor, false;
    // riders
    RegisterRider => Rider, RiderActor, false;
    GoOnline => Rider, RiderActor, false;
    GoOffline => Rider, RiderActor, false;
    UpdateLocation => Rider, RiderActor, true;
    GetRider => Rider, RiderActor, true;
    ClaimRider => Rider, RiderActor, true;
    FreeRider => (), RiderActor, true;
    AnswerOffer => Arc<Order>, RiderActor, false;
    CurrentOffer => Option<Offer>, RiderActor, true;
    ReportToZone => (), RiderActor, true;
    // dispatch zones
    RiderState => (), ZoneActor, true;
    OrderChanged => (), ZoneActor, true;
    ZoneAnswer => Arc<Order>, ZoneActor, false;
    ZoneOffer => Option<Offer>, ZoneActor, true;
    DispatchStats => ZoneStats, ZoneActor, true;
}
