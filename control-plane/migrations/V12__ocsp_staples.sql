-- OCSP stapling: the last good OCSP answer fetched for each served certificate (and for its
-- alternative chain), written by the one control-plane replica holding the `ocsp-stapling`
-- lease (`ocsp_stapling_leases`) and read by every replica when it builds a snapshot,
-- so every replica builds the same snapshot of a version. A change bumps the config version.

CREATE TABLE ocsp_staples (
    certificate_id uuid   NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    -- 'cert' or 'cert_alt'.
    slot           text   NOT NULL CHECK (slot IN ('cert', 'cert_alt')),
    -- SHA-256 of the leaf the answer is about (lowercase hex): a staple is only shipped with
    -- that leaf, never with a replaced certificate.
    leaf_sha256    text   NOT NULL,
    -- The OCSPResponse, DER, as the responder sent it.
    response       bytea  NOT NULL,
    -- 'good' or 'revoked'.
    status         text   NOT NULL,
    responder      text   NOT NULL,
    -- Unix seconds: the answer's thisUpdate and nextUpdate, when it was fetched.
    this_update    bigint NOT NULL,
    next_update    bigint,
    fetched_at     bigint NOT NULL,
    PRIMARY KEY (certificate_id, slot)
);

-- The replica fetching staples until `expires_at` (Unix seconds); renewed at every pass, taken
-- over by another replica once expired.
CREATE TABLE ocsp_stapling_leases (
    name       text   PRIMARY KEY,
    owner      uuid   NOT NULL,
    expires_at bigint NOT NULL
);
