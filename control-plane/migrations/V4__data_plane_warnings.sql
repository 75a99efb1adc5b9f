-- Problems a data plane found in the configuration it applied and made safe (an
-- authentication plugin instance that cannot be built refuses every request it covers, say),
-- as it acknowledged them: a JSON array of sentences, empty when there are none.
ALTER TABLE data_planes ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]'::jsonb;
