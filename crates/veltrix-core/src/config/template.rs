//! `{{ .field }}` templates over an event's attributes, e.g. a NATS sink's
//! `subject = "processed.{{ .type }}"`: parsed and checked once at config load, rendered per
//! event without parsing again.
//!
//! Syntax: literal text with `{{ .NAME }}` placeholders (spaces inside the braces optional);
//! `NAME` is one of [`Field::NAMES`]. There is no escaping: `{{` always opens a placeholder.

use std::ops::Range;

/// An event attribute a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Type,
    Source,
    Id,
    Subject,
}

impl Field {
    /// Every field as written in a template, in documentation order.
    pub const NAMES: [(&'static str, Field); 4] = [
        ("type", Field::Type),
        ("source", Field::Source),
        ("id", Field::Id),
        ("subject", Field::Subject),
    ];

    pub fn name(self) -> &'static str {
        Field::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every field is named")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// Why a template does not parse: `range` is the offending bytes of the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub range: Range<usize>,
    pub message: String,
    /// The unknown field's name, for a "did you mean" hint.
    pub unknown_field: Option<String>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(open) = text[rest..].find("{{").map(|i| rest + i) {
            if open > rest {
                parts.push(Part::Text(text[rest..open].to_owned()));
            }
            let Some(close) = text[open + 2..].find("}}").map(|i| open + 2 + i) else {
                return Err(TemplateError {
                    range: open..text.len(),
                    message: "`{{` is never closed with `}}`".to_owned(),
                    unknown_field: None,
                });
            };
            let inner = text[open + 2..close].trim();
            let Some(name) = inner.strip_prefix('.') else {
                return Err(TemplateError {
                    range: open..close + 2,
                    message: format!(
                        "`{{{{ {inner} }}}}` must name a field with a leading dot, like `{{{{ .type }}}}`"
                    ),
                    unknown_field: None,
                });
            };
            let Some((_, field)) = Field::NAMES.iter().find(|(n, _)| *n == name) else {
                return Err(TemplateError {
                    range: open..close + 2,
                    message: format!("unknown template field `.{name}`"),
                    unknown_field: Some(name.to_owned()),
                });
            };
            parts.push(Part::Field(*field));
            rest = close + 2;
        }
        if rest < text.len() {
            parts.push(Part::Text(text[rest..].to_owned()));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it names no field (renders the same for every event).
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Appends the template to `out`, each field's value passed through `escape` (which
    /// appends it). `value` gives a field's value, `None` when the event lacks it (rendered as
    /// nothing).
    pub fn render<'v>(
        &self,
        mut value: impl FnMut(Field) -> Option<&'v str>,
        mut escape: impl FnMut(&str, &mut String),
        out: &mut String,
    ) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => escape(value(*field).unwrap_or(""), out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &Template, ty: &str, subject: Option<&str>) -> String {
        let mut out = String::new();
        template.render(
            |f| match f {
                Field::Type => Some(ty),
                Field::Source => Some("/shop"),
                Field::Id => Some("e-1"),
                Field::Subject => subject,
            },
            |v, out| out.push_str(v),
            &mut out,
        );
        out
    }

    #[test]
    fn fields_are_replaced_and_text_kept() {
        let t = Template::parse("processed.{{ .type }}.{{.id}}-{{ .source }}").unwrap();
        assert!(!t.is_fixed());
        assert_eq!(
            render(&t, "order.created", None),
            "processed.order.created.e-1-/shop"
        );
        assert_eq!(t.as_str(), "processed.{{ .type }}.{{.id}}-{{ .source }}");
    }

    #[test]
    fn a_missing_attribute_renders_as_nothing() {
        let t = Template::parse("s.{{ .subject }}").unwrap();
        assert_eq!(render(&t, "t", None), "s.");
        assert_eq!(render(&t, "t", Some("x")), "s.x");
    }

    #[test]
    fn a_fixed_template_renders_itself() {
        let t = Template::parse("orders.out").unwrap();
        assert!(t.is_fixed());
        assert_eq!(render(&t, "t", None), "orders.out");
        assert_eq!(render(&Template::parse("").unwrap(), "t", None), "");
    }

    #[test]
    fn errors_locate_the_placeholder() {
        let e = Template::parse("a.{{ .kind }}.b").unwrap_err();
        assert_eq!(e.range, 2..13);
        assert_eq!(e.message, "unknown template field `.kind`");
        assert_eq!(e.unknown_field.as_deref(), Some("kind"));

        let e = Template::parse("a.{{ type }}").unwrap_err();
        assert_eq!(e.range, 2..12);
        assert!(e.message.contains("leading dot"), "{}", e.message);

        let e = Template::parse("a.{{ .type").unwrap_err();
        assert_eq!(e.range, 2..10);
        assert!(e.message.contains("never closed"), "{}", e.message);
    }
}
