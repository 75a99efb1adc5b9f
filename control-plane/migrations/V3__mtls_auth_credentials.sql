-- mtls-auth credentials (Kong's `mtls_auth_credentials`, the mtls-auth plugin's DAO): the
-- consumer a client certificate stands for, by the certificate's subject name and, optionally,
-- the CA certificate that issued it.
--
-- As Kong (`plugins-ee/mtls-auth/.../000_base_mtls_auth.lua`): a credential goes with its
-- consumer and with its CA certificate (both ON DELETE CASCADE). Kong's cache key
-- (subject_name, ca_certificate) is unique across every consumer; a null CA certificate is
-- one value too (NULLS NOT DISTINCT), so a subject maps to at most one consumer per CA and one
-- without a CA.
CREATE TABLE mtls_auth_credentials (
    id                uuid   PRIMARY KEY,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    consumer_id       uuid   NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    subject_name      text   NOT NULL,
    ca_certificate_id uuid   REFERENCES ca_certificates (id) ON DELETE CASCADE,
    tags              text[],
    CONSTRAINT mtls_auth_credentials_cache_key
        UNIQUE NULLS NOT DISTINCT (subject_name, ca_certificate_id)
);
CREATE INDEX mtls_auth_credentials_consumer_id_idx ON mtls_auth_credentials (consumer_id);
CREATE INDEX mtls_auth_credentials_ca_certificate_id_idx
    ON mtls_auth_credentials (ca_certificate_id);
CREATE INDEX mtls_auth_credentials_tags_idx ON mtls_auth_credentials USING gin (tags);
