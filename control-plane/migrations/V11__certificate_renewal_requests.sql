-- Renew-now requests (issue 14): `POST /clustering/data-planes/renew-certificates` (every data
-- plane, node_id null) or `.../{id}/renew-certificates` (one). Every replica reads the latest
-- request per node about once a second and asks its streams whose certificate is older than
-- it to renew at once. Rows are few (operator actions); they are kept as history.
CREATE TABLE cluster_renewal_requests (
    id           bigserial PRIMARY KEY,
    node_id      uuid,
    -- Unix milliseconds: two requests within a second are two requests.
    requested_at_ms bigint NOT NULL
);
CREATE INDEX cluster_renewal_requests_node_idx ON cluster_renewal_requests (node_id, requested_at_ms);
