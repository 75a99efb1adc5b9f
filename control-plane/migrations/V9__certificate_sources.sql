-- Watched certificate sources (--cert-source): which `certificates` row each certificate/key
-- pair found in a source directory is kept in, and the lease that lets one control-plane
-- replica at a time write a source's rows.

-- One row per pair: the certificate row (its id is derived from the source and the pair's
-- name, so every replica picks the same one), the files it was read from, and a digest of
-- what was written (certificate, key, SNIs) to write only what changed.
CREATE TABLE certificate_source_files (
    certificate_id uuid   PRIMARY KEY REFERENCES certificates (id) ON DELETE CASCADE,
    source         text   NOT NULL,
    name           text   NOT NULL,
    layout         text   NOT NULL,
    cert_path      text   NOT NULL,
    key_path       text   NOT NULL,
    digest         text   NOT NULL,
    synced_at      bigint NOT NULL,
    CONSTRAINT certificate_source_files_source_name_key UNIQUE (source, name)
);

-- The replica writing a source's rows until `expires_at` (Unix seconds); renewed at every
-- pass, taken over by another replica once expired.
CREATE TABLE certificate_source_leases (
    source     text   PRIMARY KEY,
    owner      uuid   NOT NULL,
    expires_at bigint NOT NULL
);
