//! Per-backend schema migrations. Every statement is idempotent, so `migrate` may run on every start.

use super::Backend;

/// The DDL for one backend, in order.
pub fn migrations(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
        Backend::MySql => MYSQL,
    }
}

const SQLITE: &[&str] = &[
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

const POSTGRES: &[&str] = &[
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

const MYSQL: &[&str] = &[
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
