-- surge's source of truth. Applied idempotently by the seeder (and by the API's tests).
-- Indexes: exactly the primary keys; every query the API makes is a primary-key lookup
-- (students.id, student_scores (student_id, subject_id) prefix, bookings.id, then zones/shows/events by id).

CREATE TABLE IF NOT EXISTS subjects (
    id        smallint PRIMARY KEY,
    name      text     NOT NULL,
    -- 'both' for subjects every candidate sits, else the stream that sits it.
    stream    text     NOT NULL CHECK (stream IN ('both', 'natural', 'social')),
    max_score smallint NOT NULL CHECK (max_score > 0)
);

CREATE TABLE IF NOT EXISTS students (
    id         integer  PRIMARY KEY CHECK (id > 0),   -- registration number
    full_name  text     NOT NULL,
    sex        char(1)  NOT NULL CHECK (sex IN ('F', 'M')),
    birth_date date     NOT NULL,
    school     text     NOT NULL,
    region     text     NOT NULL,
    stream     text     NOT NULL CHECK (stream IN ('natural', 'social')),
    exam_year  smallint NOT NULL,
    total      smallint NOT NULL CHECK (total >= 0),
    max_total  smallint NOT NULL CHECK (max_total > 0),
    passed     boolean  NOT NULL
);

CREATE TABLE IF NOT EXISTS student_scores (
    student_id integer  NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    subject_id smallint NOT NULL REFERENCES subjects (id),
    score      smallint NOT NULL CHECK (score >= 0),
    PRIMARY KEY (student_id, subject_id)
);

CREATE TABLE IF NOT EXISTS events (
    id    uuid PRIMARY KEY,
    name  text NOT NULL,
    venue text NOT NULL,
    city  text NOT NULL
);

CREATE TABLE IF NOT EXISTS shows (
    id        uuid        PRIMARY KEY,
    event_id  uuid        NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    starts_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS zones (
    id       uuid          PRIMARY KEY,  -- b0000000-0000-{show:04d}-{zone:04d}-000000000000
    show_id  uuid          NOT NULL REFERENCES shows (id) ON DELETE CASCADE,
    name     text          NOT NULL,
    price    numeric(10,2) NOT NULL CHECK (price >= 0),
    capacity integer       NOT NULL CHECK (capacity > 0)
);

CREATE TABLE IF NOT EXISTS bookings (
    id                uuid          PRIMARY KEY,  -- UUID v4
    user_id           uuid          NOT NULL,
    zone_id           uuid          NOT NULL REFERENCES zones (id) ON DELETE CASCADE,
    quantity          smallint      NOT NULL CHECK (quantity > 0),
    unit_price        numeric(10,2) NOT NULL CHECK (unit_price >= 0),
    total_price       numeric(12,2) NOT NULL CHECK (total_price >= 0),
    currency          char(3)       NOT NULL,
    status            text          NOT NULL CHECK (status IN
                          ('pending', 'reserved', 'confirmed', 'cancelled', 'expired', 'refunded')),
    confirmation_code char(9)       NOT NULL CHECK (confirmation_code ~ '^BK-[0-9A-Z]{6}$'),
    reserved_at       timestamptz   NOT NULL,
    confirmed_at      timestamptz,
    expires_at        timestamptz
);

-- What the seeder last loaded, so a second run with the same parameters changes nothing.
CREATE TABLE IF NOT EXISTS dataset_meta (
    dataset    text        PRIMARY KEY,  -- 'students' | 'bookings'
    seed       integer     NOT NULL,
    rows       integer     NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);
