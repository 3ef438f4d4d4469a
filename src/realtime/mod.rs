//! Live events: the in-process hub that carries what actors publish to the websockets that
//! follow an order, a merchant or a rider, and the wire shape of those events.
//!
//! An actor publishes right after its change is committed, from inside its own handler, so events
//! of one entity reach the hub in commit order. A socket subscribes *before* it takes its
//! snapshot and drops buffered events the snapshot already covers (by order version), so a late or
//! reconnecting client misses nothing and sees nothing twice.

pub mod hub;

pub use hub::{Event, Hub, Subscription, Topic};
