//! Per-backend schema migrations, numbered. `Store::migrate` applies the ones a database has not
//! seen yet (recorded in `waimai_schema`) while holding a migration lock, so several nodes
//! starting at once on an empty database do not race on the DDL.
//!
//! Version 1 is the original schema; its statements are idempotent (`IF NOT EXISTS`), so
//! databases made before versioning existed pass through it unchanged.

use super::Backend;

/// One numbered step of the schema.
pub struct Migration {
    /// Applied in ascending order; recorded once applied.
    pub version: i64,
    /// What it is for (logged).
    pub name: &'static str,
    sqlite: &'static [&'static str],
    postgres: &'static [&'static str],
    mysql: &'static [&'static str],
}

impl Migration {
    /// The DDL for one backend, in order.
    pub fn statements(&self, backend: Backend) -> &'static [&'static str] {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
            Backend::MySql => self.mysql,
        }
    }
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders, merchants, skus, riders, outbox",
        sqlite: SQLITE_V1,
        postgres: POSTGRES_V1,
        mysql: MYSQL_V1,
    },
    Migration {
        version: 2,
        name: "shard ownership and epochs, shard and pickup columns, outbox shipping",
        sqlite: SQLITE_V2,
        postgres: POSTGRES_V2,
        mysql: MYSQL_V2,
    },
    Migration {
        version: 3,
        name: "payments: intents, provider events, refunds; the simulated provider's tables",
        sqlite: SQLITE_V3,
        postgres: POSTGRES_V3,
        mysql: MYSQL_V3,
    },
    Migration {
        version: 4,
        name: "outbox rows keep the W3C trace context of the command that wrote them",
        sqlite: &["ALTER TABLE outbox ADD COLUMN traceparent TEXT"],
        postgres: &["ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent TEXT"],
        mysql: &["ALTER TABLE outbox ADD COLUMN traceparent VARCHAR(64) NULL"],
    },
    Migration {
        version: 5,
        name: "fewer index pages per write: drop indexes the node's queries do not use",
        sqlite: SQLITE_V5,
        postgres: &["DROP INDEX IF EXISTS outbox_aggregate"],
        mysql: &["DROP INDEX IF EXISTS outbox_aggregate ON outbox"],
    },
];

/// Every index entry a write adds lands on a page the commit writes out whole (on SQLite, a
/// WAL frame: two `pwrite`s). Entries keyed by a hash (an order id) or spread over the 64
/// shards land on a different page each, so they cost about a page per row, where a row
/// appended in key order shares its page with the rest of the batch. A create wrote about 4.8
/// WAL frames per order with these indexes and 2.0 without them (issue 10, BENCHMARKS.md).
/// - `outbox_aggregate`: the node never reads the outbox by entity (consumers read the events
///   topic); only the tests' `Store::outbox_for` does, on outboxes of a few rows.
/// - `orders_shard_status`: only a cluster's shard takeover reads orders by shard, and SQLite
///   never serves a cluster (PostgreSQL and MySQL keep it).
/// - `outbox_unshipped` becomes a partial index of the rows still to ship, in `seq` order: new
///   rows append to one page instead of one per shard, and a shipped row leaves it. The relay's
///   query (`published = 0 AND shard IN (..) ORDER BY seq`) reads it and filters by shard.
const SQLITE_V5: &[&str] = &[
    "DROP INDEX IF EXISTS outbox_aggregate",
    "DROP INDEX IF EXISTS orders_shard_status",
    "DROP INDEX IF EXISTS outbox_unshipped",
    "CREATE INDEX IF NOT EXISTS outbox_unshipped ON outbox (seq) WHERE published = 0",
];

/// The table recording applied versions.
pub fn version_table(backend: Backend) -> &'static str {
    match backend {
        Backend::MySql => {
            "CREATE TABLE IF NOT EXISTS waimai_schema (version BIGINT PRIMARY KEY, \
             name TEXT NOT NULL, applied_at BIGINT NOT NULL) ENGINE=InnoDB"
        }
        _ => {
            "CREATE TABLE IF NOT EXISTS waimai_schema (version BIGINT PRIMARY KEY, \
             name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        }
    }
}

const SQLITE_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS merchants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, lat REAL NOT NULL, lng REAL NOT NULL,
        is_open BIGINT NOT NULL, version BIGINT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS skus (
        merchant_id TEXT NOT NULL, sku TEXT NOT NULL, name TEXT NOT NULL,
        price_cents BIGINT NOT NULL, stock BIGINT NOT NULL CHECK (stock >= 0), fence BIGINT NOT NULL,
        PRIMARY KEY (merchant_id, sku))",
    "CREATE TABLE IF NOT EXISTS riders (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, online BIGINT NOT NULL, lat REAL, lng REAL,
        current_order TEXT, version BIGINT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, merchant_id TEXT NOT NULL, rider_id TEXT,
        status TEXT NOT NULL, items TEXT NOT NULL, total_cents BIGINT NOT NULL,
        deliver_lat REAL NOT NULL, deliver_lng REAL NOT NULL, request_hash TEXT,
        version BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_merchant ON orders (merchant_id)",
    // Startup recovery of deadlines and dispatch reads orders by status.
    "CREATE INDEX IF NOT EXISTS orders_status ON orders (status)",
    "CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL, event_type TEXT NOT NULL, payload TEXT NOT NULL,
        created_at BIGINT NOT NULL, published BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS outbox_aggregate ON outbox (aggregate_id)",
];

const POSTGRES_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS merchants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, lat DOUBLE PRECISION NOT NULL,
        lng DOUBLE PRECISION NOT NULL, is_open BIGINT NOT NULL, version BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS skus (
        merchant_id TEXT NOT NULL, sku TEXT NOT NULL, name TEXT NOT NULL,
        price_cents BIGINT NOT NULL, stock BIGINT NOT NULL CHECK (stock >= 0), fence BIGINT NOT NULL,
        PRIMARY KEY (merchant_id, sku))",
    "CREATE TABLE IF NOT EXISTS riders (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, online BIGINT NOT NULL, lat DOUBLE PRECISION,
        lng DOUBLE PRECISION, current_order TEXT, version BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, merchant_id TEXT NOT NULL, rider_id TEXT,
        status TEXT NOT NULL, items TEXT NOT NULL, total_cents BIGINT NOT NULL,
        deliver_lat DOUBLE PRECISION NOT NULL, deliver_lng DOUBLE PRECISION NOT NULL,
        request_hash TEXT, version BIGINT NOT NULL, created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_merchant ON orders (merchant_id)",
    // Startup recovery of deadlines and dispatch reads orders by status.
    "CREATE INDEX IF NOT EXISTS orders_status ON orders (status)",
    "CREATE TABLE IF NOT EXISTS outbox (
        seq BIGSERIAL PRIMARY KEY, aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
        event_type TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL,
        published BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS outbox_aggregate ON outbox (aggregate_id)",
];

const MYSQL_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS merchants (
        id VARCHAR(64) PRIMARY KEY, name TEXT NOT NULL, lat DOUBLE NOT NULL, lng DOUBLE NOT NULL,
        is_open BIGINT NOT NULL, version BIGINT NOT NULL, created_at BIGINT NOT NULL)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS skus (
        merchant_id VARCHAR(64) NOT NULL, sku VARCHAR(64) NOT NULL, name TEXT NOT NULL,
        price_cents BIGINT NOT NULL, stock BIGINT NOT NULL CHECK (stock >= 0), fence BIGINT NOT NULL,
        PRIMARY KEY (merchant_id, sku)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS riders (
        id VARCHAR(64) PRIMARY KEY, name TEXT NOT NULL, online BIGINT NOT NULL, lat DOUBLE,
        lng DOUBLE, current_order VARCHAR(64), version BIGINT NOT NULL,
        created_at BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS orders (
        id VARCHAR(64) PRIMARY KEY, customer_id VARCHAR(128) NOT NULL,
        merchant_id VARCHAR(64) NOT NULL, rider_id VARCHAR(64), status VARCHAR(32) NOT NULL,
        items TEXT NOT NULL, total_cents BIGINT NOT NULL, deliver_lat DOUBLE NOT NULL,
        deliver_lng DOUBLE NOT NULL, request_hash VARCHAR(64), version BIGINT NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        INDEX orders_merchant (merchant_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    // Startup recovery of deadlines and dispatch reads orders by status.
    "CREATE INDEX IF NOT EXISTS orders_status ON orders (status)",
    "CREATE TABLE IF NOT EXISTS outbox (
        seq BIGINT AUTO_INCREMENT PRIMARY KEY, aggregate_type VARCHAR(32) NOT NULL,
        aggregate_id VARCHAR(64) NOT NULL, event_type VARCHAR(64) NOT NULL, payload TEXT NOT NULL,
        created_at BIGINT NOT NULL, published BIGINT NOT NULL DEFAULT 0,
        INDEX outbox_aggregate (aggregate_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

const SQLITE_V2: &[&str] = &[
    "ALTER TABLE orders ADD COLUMN shard INTEGER",
    "ALTER TABLE orders ADD COLUMN pickup_lat REAL",
    "ALTER TABLE orders ADD COLUMN pickup_lng REAL",
    "CREATE INDEX IF NOT EXISTS orders_shard_status ON orders (shard, status)",
    "ALTER TABLE outbox ADD COLUMN shard INTEGER",
    "CREATE INDEX IF NOT EXISTS outbox_unshipped ON outbox (published, shard, seq)",
    "CREATE TABLE IF NOT EXISTS shard_owners (
        shard INTEGER PRIMARY KEY, epoch BIGINT NOT NULL, node_id TEXT NOT NULL,
        addr TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cluster_nodes (
        node_id TEXT PRIMARY KEY, addr TEXT NOT NULL, started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL, lag BIGINT NOT NULL)",
];

const POSTGRES_V2: &[&str] = &[
    "ALTER TABLE orders ADD COLUMN IF NOT EXISTS shard INTEGER",
    "ALTER TABLE orders ADD COLUMN IF NOT EXISTS pickup_lat DOUBLE PRECISION",
    "ALTER TABLE orders ADD COLUMN IF NOT EXISTS pickup_lng DOUBLE PRECISION",
    "CREATE INDEX IF NOT EXISTS orders_shard_status ON orders (shard, status)",
    "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS shard INTEGER",
    "CREATE INDEX IF NOT EXISTS outbox_unshipped ON outbox (published, shard, seq)",
    "CREATE TABLE IF NOT EXISTS shard_owners (
        shard INTEGER PRIMARY KEY, epoch BIGINT NOT NULL, node_id TEXT NOT NULL,
        addr TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cluster_nodes (
        node_id TEXT PRIMARY KEY, addr TEXT NOT NULL, started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL, lag BIGINT NOT NULL)",
];

const MYSQL_V2: &[&str] = &[
    "ALTER TABLE orders ADD COLUMN shard INT NULL, ADD COLUMN pickup_lat DOUBLE NULL,
        ADD COLUMN pickup_lng DOUBLE NULL, ADD INDEX orders_shard_status (shard, status)",
    "ALTER TABLE outbox ADD COLUMN shard INT NULL,
        ADD INDEX outbox_unshipped (published, shard, seq)",
    "CREATE TABLE IF NOT EXISTS shard_owners (
        shard INT PRIMARY KEY, epoch BIGINT NOT NULL, node_id VARCHAR(128) NOT NULL,
        addr VARCHAR(255) NOT NULL, updated_at BIGINT NOT NULL)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS cluster_nodes (
        node_id VARCHAR(128) PRIMARY KEY, addr VARCHAR(255) NOT NULL, started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL, lag BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

const SQLITE_V3: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (
        intent_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        method TEXT NOT NULL, status TEXT NOT NULL, shard INTEGER NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS payments_order ON payments (order_id)",
    "CREATE INDEX IF NOT EXISTS payments_open ON payments (status, shard, created_at)",
    "CREATE TABLE IF NOT EXISTS payment_events (
        event_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, kind TEXT NOT NULL,
        received_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS refunds (
        refund_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, intent_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL, status TEXT NOT NULL, attempts BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL, shard INTEGER NOT NULL, created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS refunds_due ON refunds (status, shard, next_attempt_at)",
    "CREATE TABLE IF NOT EXISTS sim_intents (
        intent_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        method TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_refunds (
        refund_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, order_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_callbacks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, shard INTEGER NOT NULL,
        due_at BIGINT NOT NULL, attempts BIGINT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sim_callbacks_due ON sim_callbacks (shard, due_at)",
];

const POSTGRES_V3: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (
        intent_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        method TEXT NOT NULL, status TEXT NOT NULL, shard INTEGER NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS payments_order ON payments (order_id)",
    "CREATE INDEX IF NOT EXISTS payments_open ON payments (status, shard, created_at)",
    "CREATE TABLE IF NOT EXISTS payment_events (
        event_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, kind TEXT NOT NULL,
        received_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS refunds (
        refund_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, intent_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL, status TEXT NOT NULL, attempts BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL, shard INTEGER NOT NULL, created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS refunds_due ON refunds (status, shard, next_attempt_at)",
    "CREATE TABLE IF NOT EXISTS sim_intents (
        intent_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        method TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_refunds (
        refund_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, order_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sim_callbacks (
        seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, shard INTEGER NOT NULL,
        due_at BIGINT NOT NULL, attempts BIGINT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sim_callbacks_due ON sim_callbacks (shard, due_at)",
];

const MYSQL_V3: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (
        intent_id VARCHAR(128) PRIMARY KEY, order_id VARCHAR(64) NOT NULL,
        amount_cents BIGINT NOT NULL, method VARCHAR(64) NOT NULL, status VARCHAR(32) NOT NULL,
        shard INT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        INDEX payments_order (order_id), INDEX payments_open (status, shard, created_at))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS payment_events (
        event_id VARCHAR(128) PRIMARY KEY, intent_id VARCHAR(128) NOT NULL,
        kind VARCHAR(64) NOT NULL, received_at BIGINT NOT NULL)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS refunds (
        refund_id VARCHAR(128) PRIMARY KEY, order_id VARCHAR(64) NOT NULL,
        intent_id VARCHAR(128) NOT NULL, amount_cents BIGINT NOT NULL, status VARCHAR(32) NOT NULL,
        attempts BIGINT NOT NULL, next_attempt_at BIGINT NOT NULL, shard INT NOT NULL,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        INDEX refunds_due (status, shard, next_attempt_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS sim_intents (
        intent_id VARCHAR(128) PRIMARY KEY, order_id VARCHAR(64) NOT NULL,
        amount_cents BIGINT NOT NULL, method VARCHAR(64) NOT NULL, status VARCHAR(32) NOT NULL,
        created_at BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS sim_refunds (
        refund_id VARCHAR(128) PRIMARY KEY, intent_id VARCHAR(128) NOT NULL,
        order_id VARCHAR(64) NOT NULL, amount_cents BIGINT NOT NULL, status VARCHAR(32) NOT NULL,
        created_at BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS sim_callbacks (
        seq BIGINT AUTO_INCREMENT PRIMARY KEY, event_id VARCHAR(128) NOT NULL, shard INT NOT NULL,
        due_at BIGINT NOT NULL, attempts BIGINT NOT NULL, body TEXT NOT NULL,
        INDEX sim_callbacks_due (shard, due_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];
