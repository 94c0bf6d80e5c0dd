-- The castmux card store. Portable SQL: it runs on SQLite (the embedded default) and is kept
-- to types and constraints PostgreSQL accepts as written (BIGINT, TEXT, CHECK, UNIQUE,
-- foreign keys); ids are assigned by the application, not by an engine-specific autoincrement.
-- Bitmasks (access criteria) are BIGINT holding the u64 bit pattern; times are Unix seconds.

-- One row: the operator's settings and counters.
CREATE TABLE settings (
    id BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    -- the operator root key, 32 hex digits; it never leaves the store except as derived keys
    root_key TEXT NOT NULL,
    serial_prefix BIGINT NOT NULL,
    -- the next serial to try when allocating; cards added with an explicit serial may sit ahead
    next_serial BIGINT NOT NULL,
    ca_system_id BIGINT NOT NULL CHECK (ca_system_id BETWEEN 0 AND 65535),
    -- service-key rotation interval in seconds; 0 = rotate only by hand
    rotate_every BIGINT NOT NULL DEFAULT 0 CHECK (rotate_every >= 0),
    -- the last change_seq handed to a card row (monotonic, never reused)
    change_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE packages (
    bit BIGINT NOT NULL PRIMARY KEY CHECK (bit BETWEEN 0 AND 63),
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE cards (
    serial BIGINT NOT NULL PRIMARY KEY CHECK (serial >= 0),
    name TEXT NOT NULL DEFAULT '',
    info TEXT NOT NULL DEFAULT '',
    access_criteria BIGINT NOT NULL DEFAULT 0,
    start_at BIGINT NOT NULL,
    finish_at BIGINT NOT NULL,
    pair BIGINT NOT NULL DEFAULT 0 CHECK (pair IN (0, 1)),
    state TEXT NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- settings.change_seq at this row's last change: the mux asks for rows above what it has
    change_seq BIGINT NOT NULL
);
CREATE INDEX cards_change_seq ON cards (change_seq);

-- Removed cards, so a reader of change_seq learns about removals too.
CREATE TABLE removed_cards (
    serial BIGINT NOT NULL PRIMARY KEY,
    change_seq BIGINT NOT NULL,
    removed_at BIGINT NOT NULL
);
CREATE INDEX removed_cards_change_seq ON removed_cards (change_seq);

-- Pay-per-view events: a package bit valid only in [start_at, end_at).
CREATE TABLE events (
    id BIGINT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    bit BIGINT NOT NULL CHECK (bit BETWEEN 0 AND 63),
    created_at BIGINT NOT NULL,
    CHECK (end_at > start_at)
);

CREATE TABLE card_events (
    serial BIGINT NOT NULL REFERENCES cards (serial) ON DELETE CASCADE,
    event_id BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (serial, event_id)
);
CREATE INDEX card_events_event ON card_events (event_id);

-- Service keys per package bit. The highest version of a bit is its next key, the one below
-- it the current key (activated_at set when it became current).
CREATE TABLE service_keys (
    bit BIGINT NOT NULL CHECK (bit BETWEEN 0 AND 63),
    version BIGINT NOT NULL CHECK (version >= 1),
    key_hex TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT,
    PRIMARY KEY (bit, version)
);

-- Every key operation and card change. Never holds key material.
CREATE TABLE audit (
    id BIGINT NOT NULL PRIMARY KEY,
    at BIGINT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
