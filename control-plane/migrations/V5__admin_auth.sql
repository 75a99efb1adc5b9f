-- Who may use the Admin API, and what they changed.
--
-- admin_credentials: bearer tokens (stored as the SHA-256 of the secret, never the secret) and
-- client-certificate subjects, each with a role, an expiry and a revocation time. Created,
-- listed and revoked with `gatehouse-cp admin-token` / `admin-cert`.
CREATE TABLE admin_credentials (
    id           uuid PRIMARY KEY,
    name         text   NOT NULL CONSTRAINT admin_credentials_name_key UNIQUE,
    kind         text   NOT NULL CHECK (kind IN ('token', 'certificate')),
    role         text   NOT NULL CHECK (role IN ('read-only', 'read-write')),
    -- token: SHA-256 of the token; certificate: NULL.
    token_hash   bytea  CONSTRAINT admin_credentials_token_hash_key UNIQUE,
    -- certificate: the subject name (a SAN or the CN) a client certificate must carry.
    subject      text,
    created_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    revoked_at   bigint,
    last_used_at bigint,
    CHECK ((kind = 'token') = (token_hash IS NOT NULL)),
    CHECK ((kind = 'certificate') = (subject IS NOT NULL))
);
CREATE INDEX admin_credentials_subject_idx ON admin_credentials (subject) WHERE subject IS NOT NULL;

-- One row per committed Admin API write, inserted in the write's own transaction (so a write
-- and its audit row commit or roll back together). Never holds a request body.
CREATE TABLE audit_log (
    id             uuid PRIMARY KEY,
    created_at     double precision NOT NULL,
    -- Who: the credential's name, `anonymous` when the Admin API runs without authentication,
    -- or the control plane's own component (`gatehouse`) for writes it makes itself.
    actor          text   NOT NULL,
    credential_id  uuid,
    -- How they authenticated: token, certificate, none, internal.
    auth           text   NOT NULL,
    remote_addr    text,
    method         text   NOT NULL,
    path           text   NOT NULL,
    -- create, update, replace, delete.
    action         text   NOT NULL,
    entity         text   NOT NULL,
    entity_id      uuid,
    config_version bigint
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity, entity_id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor);
