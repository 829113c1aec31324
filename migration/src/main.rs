//! `cargo run -p migration --features cli -- up` (or `down`, `status`, `fresh`, ...), with the
//! database URL in `DATABASE_URL` or `-u`.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}
