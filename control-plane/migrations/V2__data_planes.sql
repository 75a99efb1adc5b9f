-- Data planes known to the cluster (Kong's clustering_data_planes), written by whichever
-- control-plane replica a data plane is connected to, so every replica's Admin API shows the
-- whole fleet. Not configuration: writes here never bump the config version.
--
-- `session` identifies the sync stream that owns the row: a data plane that reconnects gets a
-- new session, and late writes of its previous stream (on any replica) no longer apply.
-- `connected` is a lease: the owning replica refreshes `last_seen` while the stream lives, and
-- readers treat a connected row not seen for a while as disconnected (its replica died).
CREATE TABLE data_planes (
    id             uuid    PRIMARY KEY,
    hostname       text    NOT NULL,
    ip             text    NOT NULL,
    version        text    NOT NULL,
    labels         jsonb   NOT NULL DEFAULT '{}'::jsonb,
    -- What the data plane runs; both null while it runs no configuration.
    config_version bigint,
    config_hash    text,
    sync_status    text    NOT NULL DEFAULT 'unknown'
        CONSTRAINT data_planes_sync_status_check
        CHECK (sync_status IN ('unknown', 'normal', 'rejected', 'version_incompatible')),
    -- Why the last snapshot was rejected, or why the data plane was refused.
    error          text,
    -- notAfter of the data plane's cluster certificate, Unix seconds.
    cert_expiry    bigint,
    connected      boolean NOT NULL DEFAULT false,
    -- Node id of the control plane holding the stream.
    control_plane  uuid,
    session        uuid,
    last_seen      bigint  NOT NULL,
    created_at     bigint  NOT NULL,
    updated_at     bigint  NOT NULL
);
CREATE INDEX data_planes_session_idx ON data_planes (session) WHERE connected;
CREATE INDEX data_planes_hostname_idx ON data_planes (hostname, id);
