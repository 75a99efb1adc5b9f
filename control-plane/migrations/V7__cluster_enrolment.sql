-- Data-plane enrolment (issue 14): bootstrap tokens, the certificates the cluster CA issued
-- to data planes, and which of them (or of any other certificate) are revoked.
--
-- A token is stored only as the SHA-256 of its secret (lowercase hex); its uses are counted
-- with one conditional UPDATE, so a single-use token is consumed once across every replica.
CREATE TABLE cluster_tokens (
    id          uuid    PRIMARY KEY,
    token_hash  text    NOT NULL UNIQUE,
    max_uses    integer NOT NULL CHECK (max_uses >= 1),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    labels      jsonb   NOT NULL DEFAULT '{}'::jsonb,
    expires_at  bigint  NOT NULL,
    revoked_at  bigint,
    last_used_at bigint,
    created_at  bigint  NOT NULL
);

-- Certificates of data planes by serial (lowercase hex): every certificate the CA issued at
-- enrolment or renewal, and certificates from elsewhere (pki init) once revoked. A row with
-- `revoked_at` set is refused by every replica at stream start and ends open streams.
CREATE TABLE cluster_certificates (
    serial      text    PRIMARY KEY,
    node_id     uuid    NOT NULL,
    spiffe_id   text,
    issuer      text,
    not_before  bigint,
    not_after   bigint  NOT NULL,
    -- The bootstrap token of an enrolment; null for a renewal or a foreign certificate.
    token_id    uuid,
    created_at  bigint  NOT NULL,
    revoked_at  bigint
);
CREATE INDEX cluster_certificates_node_idx ON cluster_certificates (node_id);
CREATE INDEX cluster_certificates_revoked_idx ON cluster_certificates (revoked_at)
    WHERE revoked_at IS NOT NULL;

-- What the registry shows of a data plane's current certificate.
ALTER TABLE data_planes ADD COLUMN cert_serial text;
ALTER TABLE data_planes ADD COLUMN cert_issuer text;
ALTER TABLE data_planes ADD COLUMN spiffe_id text;
