-- ACME on the control plane (the `acme` plugin): accounts, per-name state, and the pending
-- challenges every data plane answers. None of this is an Admin API entity.

-- One account per (directory, e-mail). `credentials` is instant-acme's serialised account
-- (id, directory, PKCS#8 private key): stored as is until keys are encrypted at rest.
CREATE TABLE acme_accounts (
    api_uri       text   NOT NULL,
    account_email text   NOT NULL,
    credentials   jsonb  NOT NULL,
    created_at    bigint NOT NULL,
    PRIMARY KEY (api_uri, account_email)
);

-- One row per name the control plane keeps a certificate for. The certificate itself is an
-- ordinary `certificates` row (tagged `managed-by-acme` and `acme:<host>`), replaced in place
-- at renewal. `lease_owner`/`lease_expires_at` make one control-plane replica order a name at
-- a time; a replica that dies mid-order loses the lease when it expires.
CREATE TABLE acme_names (
    host             text    PRIMARY KEY,
    certificate_id   uuid    REFERENCES certificates (id) ON DELETE SET NULL,
    requested_by     text    NOT NULL,
    order_url        text,
    failures         integer NOT NULL DEFAULT 0,
    last_error       text,
    last_attempt_at  bigint,
    last_success_at  bigint,
    next_attempt_at  bigint  NOT NULL DEFAULT 0,
    renew_after      bigint,
    lease_owner      uuid,
    lease_expires_at bigint,
    created_at       bigint  NOT NULL,
    updated_at       bigint  NOT NULL
);
CREATE INDEX acme_names_next_attempt_at_idx ON acme_names (next_attempt_at);
CREATE INDEX acme_names_created_at_idx ON acme_names (created_at);

-- Challenges being validated: they travel in every snapshot (`Config.acme_challenges`), so
-- adding or removing one bumps the config version. `host` is the name whose order (or
-- `test_http_challenge_flow` check) published it.
CREATE TABLE acme_challenges (
    id                uuid   PRIMARY KEY,
    host              text   NOT NULL,
    kind              text   NOT NULL,
    domain            text   NOT NULL,
    token             text   NOT NULL,
    key_authorization text   NOT NULL,
    expires_at        bigint NOT NULL
);
CREATE INDEX acme_challenges_host_idx ON acme_challenges (host);
