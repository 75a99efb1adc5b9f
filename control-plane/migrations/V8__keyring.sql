-- Keys encrypted at rest (`gatehouse-cp keyring`). Private keys (`certificates.key`,
-- `certificates.key_alt`, `acme_accounts.credentials`) are stored sealed with AES-256-GCM
-- under a data key: `ghenc:v1:<data key id>:<base64(nonce || ciphertext || tag)>`, with the
-- table, column and row as associated data. Data keys are random and stored here wrapped
-- (sealed) by a key-encryption key (KEK) that never enters the database: it lives in the file
-- of `--keyring-key-file`, shared by every control-plane replica.

CREATE TABLE keyring_data_keys (
    id         text   PRIMARY KEY,
    kek_id     text   NOT NULL,
    -- base64(nonce || sealed 32-byte key || tag), associated data `keyring data key <id>`.
    wrapped    text   NOT NULL,
    created_at bigint NOT NULL
);

-- The data key new values are sealed with: one row. Writers lock it `FOR SHARE` while they
-- seal, so `keyring rotate` switching it waits for them, and every row written under the
-- previous key is committed (and re-encrypted by the rotation) once the switch is.
CREATE TABLE keyring_active (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    data_key_id text    NOT NULL REFERENCES keyring_data_keys (id)
);

-- Secret references (`{vault://env/NAME}`, `{vault://file/PATH}`) in certificates: a digest
-- of the values they resolved to at the last refresh. A replica whose refresh finds another
-- digest replaces it and bumps the config version in the same transaction, so a changed
-- secret makes one new version however many replicas notice it.
CREATE TABLE secret_references_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    digest     text    NOT NULL,
    updated_at bigint  NOT NULL
);
