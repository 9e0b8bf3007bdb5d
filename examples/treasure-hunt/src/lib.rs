//! The game's own logic, as a Veltrix custom processor: `score` gives every `treasure.claimed`
//! event its `data.points` — the points of the treasure's rarity (the part of its id before the
//! first `-`: `gold-17` is gold), plus a bonus when the player claimed it without a hint
//! (`data.hint_free = true`). Scoring is a pure function of the event, so a redelivered claim
//! scores the same.
//!
//! A claim of an unknown rarity is a bug in the game client, not something to guess: the
//! processor fails it, and the pipeline dead-letters it with the reason (inspect it with
//! `treasure-hunt dlq list claims`). Other event types pass untouched.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use veltrix_engine::handler::{Event, Plugins, ProcessError, Processor};

/// The handler types of the game.
pub fn plugins() -> Plugins {
    Plugins::new().processor("score", |options| {
        Ok(Arc::new(Score::from_options(options)?))
    })
}

/// `{ type = "score", points = { gold = 100, silver = 50, bronze = 10 }, hint_free_bonus = 20 }`.
pub struct Score {
    points: BTreeMap<String, i64>,
    hint_free_bonus: i64,
}

impl Score {
    pub fn from_options(options: &Value) -> Result<Score, String> {
        let object = options.as_object().ok_or("options must be a table")?;
        if let Some(key) = object
            .keys()
            .find(|k| !["points", "hint_free_bonus"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown option `{key}` (score takes `points`, `hint_free_bonus`)"
            ));
        }
        let points = object
            .get("points")
            .and_then(Value::as_object)
            .ok_or("`points` is required: points per rarity, e.g. { gold = 100, silver = 50 }")?;
        let points = points
            .iter()
            .map(|(rarity, p)| match p.as_i64() {
                Some(p) if p >= 0 => Ok((rarity.clone(), p)),
                _ => Err(format!("`points.{rarity}` must be a non-negative integer")),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        if points.is_empty() {
            return Err("`points` must list at least one rarity".to_owned());
        }
        let hint_free_bonus = match object.get("hint_free_bonus") {
            None => 0,
            Some(v) => v
                .as_i64()
                .filter(|b| *b >= 0)
                .ok_or("`hint_free_bonus` must be a non-negative integer")?,
        };
        Ok(Score {
            points,
            hint_free_bonus,
        })
    }

    /// The points of one claim, or why it cannot be scored.
    pub fn points_for(&self, data: &Value) -> Result<i64, String> {
        let treasure = data["treasure"]
            .as_str()
            .ok_or("a claim needs `data.treasure` (a string like \"gold-17\")")?;
        data["player"]
            .as_str()
            .filter(|p| !p.is_empty())
            .ok_or("a claim needs `data.player`")?;
        let rarity = treasure.split('-').next().unwrap_or_default();
        let base = self.points.get(rarity).ok_or_else(|| {
            format!(
                "treasure `{treasure}` has unknown rarity `{rarity}` (known: {})",
                self.points.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let bonus = if data["hint_free"].as_bool() == Some(true) {
            self.hint_free_bonus
        } else {
            0
        };
        Ok(base + bonus)
    }
}

impl Processor for Score {
    fn process(&self, event: Event, out: &mut Vec<Event>) -> Result<(), ProcessError> {
        if event.ty() != "treasure.claimed" {
            out.push(event);
            return Ok(());
        }
        let data = event.data_json().unwrap_or(Value::Null);
        let points = self.points_for(&data).map_err(ProcessError)?;
        let mut json = event.to_json();
        json["data"]["points"] = json!(points);
        out.push(Event::from_json(&json).map_err(|e| ProcessError::new(e.to_string()))?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score() -> Score {
        Score::from_options(&json!({"points": {"gold": 100, "silver": 50}, "hint_free_bonus": 20}))
            .unwrap()
    }

    fn claim(data: Value) -> Event {
        Event::new("/game", "treasure.claimed", data).unwrap()
    }

    #[test]
    fn a_claim_scores_its_rarity_plus_the_hint_free_bonus() {
        let s = score();
        assert_eq!(
            s.points_for(&json!({"player": "ann", "treasure": "gold-1"})),
            Ok(100)
        );
        assert_eq!(
            s.points_for(&json!({"player": "ann", "treasure": "silver-9", "hint_free": true})),
            Ok(70)
        );
        let mut out = Vec::new();
        s.process(
            claim(json!({"player": "ann", "treasure": "gold-3"})),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0].data_json().unwrap()["points"], 100);
    }

    #[test]
    fn an_unknown_rarity_fails_with_the_reason() {
        let mut out = Vec::new();
        let error = score()
            .process(
                claim(json!({"player": "ann", "treasure": "plastic-1"})),
                &mut out,
            )
            .unwrap_err();
        assert!(error.0.contains("unknown rarity `plastic`"), "{error}");
        assert!(out.is_empty());
    }

    #[test]
    fn other_events_pass_untouched() {
        let mut out = Vec::new();
        let checkin = Event::new("/game", "player.checkin", json!({"player": "ann"})).unwrap();
        score().process(checkin.clone(), &mut out).unwrap();
        assert_eq!(out, [checkin]);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Score::from_options(&json!({})).is_err());
        assert!(Score::from_options(&json!({"points": {"gold": -1}})).is_err());
        assert!(Score::from_options(&json!({"points": {"gold": 1}, "bonus": 1})).is_err());
    }
}
