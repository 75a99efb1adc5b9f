-- Gatehouse configuration store: one table per Kong entity, plus the config version.
--
-- Conventions: `id` is a UUID primary key; `created_at`/`updated_at` are Unix seconds (targets:
-- seconds with millisecond precision, as Kong); `tags` is a text[] with a GIN index for the
-- `?tags=` filters. A foreign key to entity X is the column `X_id`. Cascades and refusals follow
-- Kong: plugins, SNIs, targets and ACLs go with their parent; a service with routes, or a
-- certificate used as a client certificate, cannot be deleted.

-- The single config version. Every committed write bumps it in the same transaction, under the
-- row lock, so versions are gap-free in commit order.
CREATE TABLE config_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint  NOT NULL
);
INSERT INTO config_version (singleton, version) VALUES (true, 0);

CREATE TABLE ca_certificates (
    id          uuid PRIMARY KEY,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    cert        text   NOT NULL,
    cert_digest text   NOT NULL CONSTRAINT ca_certificates_cert_digest_key UNIQUE,
    subject     text   NOT NULL,
    issuer      text   NOT NULL,
    not_before  bigint NOT NULL,
    not_after   bigint NOT NULL,
    tags        text[]
);

CREATE TABLE certificates (
    id                 uuid PRIMARY KEY,
    created_at         bigint NOT NULL,
    updated_at         bigint NOT NULL,
    cert               text   NOT NULL,
    key                text   NOT NULL,
    cert_alt           text,
    key_alt            text,
    subject            text   NOT NULL,
    issuer             text   NOT NULL,
    sans               text[] NOT NULL,
    not_before         bigint NOT NULL,
    not_after          bigint NOT NULL,
    fingerprint_sha256 text   NOT NULL,
    key_type           text   NOT NULL,
    tags               text[]
);
CREATE INDEX certificates_not_after_idx ON certificates (not_after);

CREATE TABLE snis (
    id             uuid PRIMARY KEY,
    created_at     bigint NOT NULL,
    updated_at     bigint NOT NULL,
    name           text   NOT NULL CONSTRAINT snis_name_key UNIQUE,
    certificate_id uuid   NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    tags           text[]
);
CREATE INDEX snis_certificate_id_idx ON snis (certificate_id);

CREATE TABLE services (
    id                    uuid PRIMARY KEY,
    created_at            bigint  NOT NULL,
    updated_at            bigint  NOT NULL,
    name                  text    CONSTRAINT services_name_key UNIQUE,
    retries               bigint,
    protocol              text    NOT NULL,
    host                  text    NOT NULL,
    port                  bigint  NOT NULL,
    path                  text,
    connect_timeout       bigint,
    write_timeout         bigint,
    read_timeout          bigint,
    client_certificate_id uuid    REFERENCES certificates (id),
    tls_verify            boolean,
    tls_verify_depth      bigint,
    ca_certificates       uuid[],
    enabled               boolean NOT NULL,
    tags                  text[]
);
CREATE INDEX services_client_certificate_id_idx ON services (client_certificate_id);
CREATE INDEX services_ca_certificates_idx ON services USING gin (ca_certificates);

CREATE TABLE routes (
    id                         uuid PRIMARY KEY,
    created_at                 bigint  NOT NULL,
    updated_at                 bigint  NOT NULL,
    name                       text    CONSTRAINT routes_name_key UNIQUE,
    protocols                  text[]  NOT NULL,
    methods                    text[],
    hosts                      text[],
    paths                      text[],
    headers                    jsonb,
    https_redirect_status_code bigint  NOT NULL,
    regex_priority             bigint,
    strip_path                 boolean NOT NULL,
    path_handling              text,
    preserve_host              boolean NOT NULL,
    request_buffering          boolean NOT NULL,
    response_buffering         boolean NOT NULL,
    snis                       text[],
    sources                    jsonb,
    destinations               jsonb,
    service_id                 uuid    REFERENCES services (id),
    tags                       text[]
);
CREATE INDEX routes_service_id_idx ON routes (service_id);

CREATE TABLE upstreams (
    id                        uuid PRIMARY KEY,
    created_at                bigint  NOT NULL,
    updated_at                bigint  NOT NULL,
    name                      text    NOT NULL CONSTRAINT upstreams_name_key UNIQUE,
    algorithm                 text,
    hash_on                   text,
    hash_fallback             text,
    hash_on_header            text,
    hash_fallback_header      text,
    hash_on_cookie            text,
    hash_on_cookie_path       text,
    hash_on_query_arg         text,
    hash_fallback_query_arg   text,
    hash_on_uri_capture       text,
    hash_fallback_uri_capture text,
    slots                     bigint,
    healthchecks              jsonb,
    host_header               text,
    client_certificate_id     uuid    REFERENCES certificates (id),
    use_srv_name              boolean,
    tags                      text[]
);
CREATE INDEX upstreams_client_certificate_id_idx ON upstreams (client_certificate_id);

CREATE TABLE targets (
    id          uuid PRIMARY KEY,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    upstream_id uuid             NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    target      text             NOT NULL,
    weight      bigint           NOT NULL,
    tags        text[],
    CONSTRAINT targets_upstream_id_target_key UNIQUE (upstream_id, target)
);

CREATE TABLE consumers (
    id         uuid PRIMARY KEY,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    username   text   CONSTRAINT consumers_username_key UNIQUE,
    custom_id  text   CONSTRAINT consumers_custom_id_key UNIQUE,
    tags       text[],
    CHECK (username IS NOT NULL OR custom_id IS NOT NULL)
);

CREATE TABLE acls (
    id          uuid PRIMARY KEY,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    consumer_id uuid   NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    "group"     text   NOT NULL,
    tags        text[],
    CONSTRAINT acls_consumer_id_group_key UNIQUE (consumer_id, "group")
);

CREATE TABLE plugins (
    id            uuid PRIMARY KEY,
    created_at    bigint  NOT NULL,
    updated_at    bigint  NOT NULL,
    name          text    NOT NULL,
    instance_name text    CONSTRAINT plugins_instance_name_key UNIQUE,
    route_id      uuid    REFERENCES routes (id) ON DELETE CASCADE,
    service_id    uuid    REFERENCES services (id) ON DELETE CASCADE,
    consumer_id   uuid    REFERENCES consumers (id) ON DELETE CASCADE,
    config        jsonb   NOT NULL,
    protocols     text[]  NOT NULL,
    enabled       boolean NOT NULL,
    tags          text[],
    CONSTRAINT plugins_cache_key UNIQUE NULLS NOT DISTINCT (name, route_id, service_id, consumer_id)
);
CREATE INDEX plugins_route_id_idx ON plugins (route_id);
CREATE INDEX plugins_service_id_idx ON plugins (service_id);
CREATE INDEX plugins_consumer_id_idx ON plugins (consumer_id);

CREATE INDEX ca_certificates_tags_idx ON ca_certificates USING gin (tags);
CREATE INDEX certificates_tags_idx ON certificates USING gin (tags);
CREATE INDEX snis_tags_idx ON snis USING gin (tags);
CREATE INDEX services_tags_idx ON services USING gin (tags);
CREATE INDEX routes_tags_idx ON routes USING gin (tags);
CREATE INDEX upstreams_tags_idx ON upstreams USING gin (tags);
CREATE INDEX targets_tags_idx ON targets USING gin (tags);
CREATE INDEX consumers_tags_idx ON consumers USING gin (tags);
CREATE INDEX acls_tags_idx ON acls USING gin (tags);
CREATE INDEX plugins_tags_idx ON plugins USING gin (tags);
