//! A warp hello-world server: the yardstick for HTTP throughput on this machine. The speed
//! figures in BENCHMARKS.md are given as a ratio to it, measured in the same run, since absolute
//! figures on shared machines swing by 2x between days.
//!
//! `cargo run --release --example hello -- 127.0.0.1:18999`

use warp::Filter;

#[tokio::main]
async fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18999".into())
        .parse()
        .unwrap_or_else(|e| panic!("listen address: {e}"));
    let hello = warp::path::end().map(|| "hello");
    warp::serve(hello).run(addr).await;
}
