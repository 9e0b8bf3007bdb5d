-- The treasure hunt's tables, as Veltrix creates them when they are missing (create_table = true),
-- plus the views the walkthrough queries. Safe to run again.
--
--   psql postgres://postgres@127.0.0.1:5432/test -f examples/treasure-hunt/schema.sql

-- Check-ins and clues (sink events_db). One row per event: (source, id) is the CloudEvents
-- identity, so a redelivered event is not inserted twice.
CREATE TABLE IF NOT EXISTS game_events (
  id text NOT NULL, source text NOT NULL, type text NOT NULL, time timestamptz, subject text,
  data jsonb, player text,
  PRIMARY KEY (source, id)
);

-- Scored claims (sink claims_db), one row per claim.
CREATE TABLE IF NOT EXISTS claims (
  id text NOT NULL, source text NOT NULL, type text NOT NULL, time timestamptz, subject text,
  data jsonb, player text, treasure text, points bigint,
  PRIMARY KEY (source, id)
);

-- Points per player per minute (sink leaderboard_db), from the aggregate. The id of a window's
-- row is a hash of the player and the window start: a window emitted twice is one row.
CREATE TABLE IF NOT EXISTS leaderboard (
  id text NOT NULL, source text NOT NULL, type text NOT NULL, time timestamptz, subject text,
  data jsonb, player text, window_start timestamptz, claims bigint, points bigint,
  PRIMARY KEY (source, id)
);

-- The standings: every minute's points summed per player.
CREATE OR REPLACE VIEW leaderboard_totals AS
  SELECT player, sum(points)::bigint AS points, sum(claims)::bigint AS claims, max(window_start) AS last_window
  FROM leaderboard
  GROUP BY player
  ORDER BY points DESC, player;
