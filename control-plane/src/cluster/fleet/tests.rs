#![allow(clippy::unwrap_used)]

use uuid::Uuid;

use super::*;

const NOW: i64 = 1_795_000_000;

fn dp(hostname: &str) -> DataPlane {
    DataPlane {
        id: Uuid::new_v4(),
        hostname: hostname.into(),
        ip: "10.0.0.1".into(),
        version: "0.1.0".into(),
        labels: json!({"zone": "a"}),
        config_version: Some(7),
        config_hash: Some("h7".into()),
        sync_status: SyncStatus::Normal,
        error: None,
        cert_expiry: Some(NOW + 86_400),
        connected: true,
        control_plane: Some(Uuid::new_v4()),
        session: Some(Uuid::new_v4()),
        last_seen: NOW - 3,
        created_at: NOW - 100,
        updated_at: NOW - 3,
        warnings: json!([]),
        cert_serial: None,
        cert_issuer: None,
        spiffe_id: None,
    }
}

const CURRENT: Current<'static> = Current {
    version: 7,
    hash: "h7",
};

fn reason(dp: &DataPlane, current: Option<Current<'_>>) -> Option<String> {
    lag_reason(dp, dp.is_connected(NOW, LEASE), current, "no snapshot")
}

#[test]
fn connected_on_the_current_hash_is_in_sync() {
    assert_eq!(reason(&dp("a"), Some(CURRENT)), None);
    // Same content under a later version: still in sync (nothing was sent).
    let later = Current {
        version: 9,
        hash: "h7",
    };
    assert_eq!(reason(&dp("a"), Some(later)), None);
}

#[test]
fn lag_reasons() {
    let mut behind = dp("a");
    behind.config_version = Some(6);
    behind.config_hash = Some("h6".into());
    assert_eq!(
        reason(&behind, Some(CURRENT)).as_deref(),
        Some("applying version 7")
    );

    let mut fresh = dp("a");
    fresh.config_version = None;
    fresh.config_hash = None;
    assert_eq!(
        reason(&fresh, Some(CURRENT)).as_deref(),
        Some("applying version 7")
    );

    let mut rejected = behind.clone();
    rejected.sync_status = SyncStatus::Rejected;
    rejected.error = Some("route r1: bad regex".into());
    assert_eq!(
        reason(&rejected, Some(CURRENT)).as_deref(),
        Some("rejected: route r1: bad regex")
    );

    let mut newer = dp("a");
    newer.config_version = Some(12);
    newer.config_hash = Some("h12".into());
    assert_eq!(
        reason(&newer, Some(CURRENT)).as_deref(),
        Some("runs version 12, newer than this control plane's 7")
    );

    let mut gone = dp("a");
    gone.connected = false;
    gone.last_seen = 1_795_000_000;
    assert_eq!(
        reason(&gone, Some(CURRENT)).as_deref(),
        Some("disconnected since 2026-11-18T11:06:40Z")
    );

    // A connected row whose lease expired (its control plane died) is disconnected.
    let mut stale = dp("a");
    stale.last_seen = NOW - LEASE - 1;
    assert!(!stale.is_connected(NOW, LEASE));
    assert!(
        reason(&stale, Some(CURRENT))
            .unwrap()
            .starts_with("disconnected since ")
    );

    let mut incompatible = dp("a");
    incompatible.connected = false;
    incompatible.sync_status = SyncStatus::VersionIncompatible;
    incompatible.error = Some("data plane version 1.0.0 is incompatible".into());
    assert_eq!(
        reason(&incompatible, Some(CURRENT)).as_deref(),
        Some("version incompatible: data plane version 1.0.0 is incompatible")
    );

    assert_eq!(reason(&dp("a"), None).as_deref(), Some("no snapshot"));
}

#[test]
fn status_counts_and_lists() {
    let mut behind = dp("b");
    behind.config_hash = Some("h6".into());
    behind.config_version = Some(6);
    let mut gone = dp("c");
    gone.connected = false;
    let rows = vec![dp("a"), behind.clone(), gone.clone()];
    let status = status_json(
        &rows,
        Some(CURRENT),
        "no snapshot",
        Counters { built: 3, sent: 5 },
        Some("127.0.0.1:8005".into()),
        NOW,
    );
    assert_eq!(status["config_version"], json!(7));
    assert_eq!(status["config_hash"], json!("h7"));
    assert_eq!(status["snapshots_built"], json!(3));
    assert_eq!(status["snapshots_sent"], json!(5));
    assert_eq!(status["cluster_listener"], json!("127.0.0.1:8005"));
    assert_eq!(
        status["data_planes"],
        json!({"total": 3, "connected": 2, "in_sync": 1, "with_warnings": 0})
    );
    let lagging = status["lagging"].as_array().unwrap();
    assert_eq!(lagging.len(), 2);
    assert_eq!(lagging[0]["id"], json!(behind.id));
    assert_eq!(lagging[0]["reason"], json!("applying version 7"));
    assert_eq!(lagging[0]["connected"], json!(true));
    assert_eq!(lagging[1]["id"], json!(gone.id));
    assert_eq!(lagging[1]["connected"], json!(false));

    let empty = status_json(&[], None, "x", Counters { built: 0, sent: 0 }, None, NOW);
    assert_eq!(
        empty,
        json!({
            "config_version": null, "config_hash": null, "snapshots_built": 0,
            "snapshots_sent": 0, "cluster_listener": null,
            "data_planes": {"total": 0, "connected": 0, "in_sync": 0, "with_warnings": 0},
            "lagging": [], "warnings": [],
        })
    );
}

#[test]
fn data_plane_shape() {
    let row = dp("a");
    let json = data_plane_json(&row, NOW);
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "id",
        "hostname",
        "ip",
        "version",
        "config_hash",
        "config_version",
        "last_seen",
        "sync_status",
        "labels",
        "cert_expiry",
        "error",
        "connected",
        "updated_at",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert_eq!(json["sync_status"], json!("normal"));
    assert_eq!(json["connected"], json!(true));
    assert_eq!(
        json["cert_details"]["expiry_timestamp"],
        json!(NOW + 86_400)
    );
    assert_eq!(
        data_plane_json(&row, NOW + LEASE + 10)["connected"],
        json!(false)
    );
}
