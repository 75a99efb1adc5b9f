//! Self-test of the harness: the shared PostgreSQL server and per-test databases.
//!
//! Each test calls `test_db()` on its own, so under cargo nextest (one process per test) they
//! also prove that concurrent processes share one cluster.

use anyhow::Result;
use gatehouse_tests::{TestDb, test_db};
use tokio_postgres::NoTls;

async fn connect(db: &TestDb) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn each_call_gives_a_fresh_database_that_accepts_connections() -> Result<()> {
    let a = test_db().await?;
    let b = test_db().await?;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);

    for db in [&a, &b] {
        let client = connect(db).await?;
        let row = client
            .query_one("SELECT 1::int4, current_database()", &[])
            .await?;
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, String>(1), db.name);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(tables, 0, "{} is not empty", db.name);
    }

    // Isolated: a table in one database is not in the other.
    connect(&a)
        .await?
        .batch_execute("CREATE TABLE only_in_a (id int)")
        .await?;
    let in_b = connect(&b)
        .await?
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a'", &[])
        .await?;
    assert!(in_b.is_none());
    Ok(())
}

#[tokio::test]
async fn dropping_a_test_db_drops_the_database() -> Result<()> {
    let observer = test_db().await?;
    let client = observer.client().await?;
    let exists = async |name: &str| -> Result<bool> {
        let row = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?;
        Ok(row.is_some())
    };

    let dropped_explicitly = test_db().await?;
    let name = dropped_explicitly.name.clone();
    // An open session does not prevent the drop.
    let _session = dropped_explicitly.client().await?;
    assert!(exists(&name).await?);
    dropped_explicitly.drop_db().await?;
    assert!(!exists(&name).await?);

    let dropped_implicitly = test_db().await?;
    let name = dropped_implicitly.name.clone();
    assert!(exists(&name).await?);
    drop(dropped_implicitly);
    assert!(!exists(&name).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_can_be_created_concurrently() -> Result<()> {
    let handles: Vec<_> = (0..8).map(|_| tokio::spawn(test_db())).collect();
    let mut names = Vec::new();
    for handle in handles {
        let db = handle.await??;
        connect(&db).await?.batch_execute("SELECT 1").await?;
        names.push(db.name.clone());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 8);
    Ok(())
}
