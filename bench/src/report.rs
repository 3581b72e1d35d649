//! What a scenario measured, and its two renderings: a table for people and
//! one JSON object per line for scripts (written by serde_json). Both come
//! from the same list of fields, so they cannot disagree.

use std::fmt::Write;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// One measured or configured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A count.
    Int(u64),
    /// A measurement, shown with this many decimals in the table (JSON keeps
    /// them all).
    Float(f64, usize),
    /// Nothing to show: not measured this run (`null` in JSON, `-` in the
    /// table).
    Missing,
}

/// One scenario's results.
pub struct Report {
    /// The scenario's name, e.g. `fanout`.
    pub scenario: &'static str,
    /// What was run, in words, above the table.
    pub title: String,
    /// `(json key, table heading, value)`, in table order.
    pub fields: Vec<(&'static str, &'static str, Value)>,
    /// Things the reader must know to trust the numbers.
    pub notes: Vec<String>,
}

impl Report {
    /// A report with no fields yet.
    pub fn new(scenario: &'static str, title: String) -> Report {
        Report {
            scenario,
            title,
            fields: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a field.
    pub fn field(&mut self, key: &'static str, heading: &'static str, value: Value) {
        self.fields.push((key, heading, value));
    }

    /// Says how many nodes the run used, when more than one: a
    /// single-node report stays as it always was.
    pub fn nodes(&mut self, nodes: usize) {
        if nodes > 1 {
            self.title.push_str(&format!(", over {nodes} nodes"));
            self.field("nodes", "nodes", Value::Int(nodes as u64));
        }
    }

    /// The value under `key`, for tests and cross-checks.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|f| f.0 == key).map(|f| &f.2)
    }

    /// The table: a title line, a heading row, a value row, then notes.
    pub fn table(&self) -> String {
        let cells: Vec<String> = self.fields.iter().map(|f| cell(&f.2)).collect();
        let mut head = String::new();
        let mut row = String::new();
        for ((_, heading, _), cell) in self.fields.iter().zip(&cells) {
            let w = heading.len().max(cell.len());
            let _ = write!(head, "  {heading:>w$}");
            let _ = write!(row, "  {cell:>w$}");
        }
        let mut out = format!("== {}: {}\n{head}\n{row}\n", self.scenario, self.title);
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }

    /// One line of JSON: `scenario`, every field in table order, and
    /// `notes`.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 2))?;
        map.serialize_entry("scenario", self.scenario)?;
        for (key, _, value) in &self.fields {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("notes", &self.notes)?;
        map.end()
    }
}

impl Serialize for Value {
    /// A count or a measurement as a JSON number; a value not measured, or a
    /// measurement that is not finite, as `null`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(n) => serializer.serialize_u64(*n),
            Value::Float(x, _) if x.is_finite() => serializer.serialize_f64(*x),
            Value::Float(..) | Value::Missing => serializer.serialize_none(),
        }
    }
}

/// A value as the table shows it: big numbers with thousands separators.
fn cell(v: &Value) -> String {
    match v {
        Value::Int(n) => group_thousands(*n),
        Value::Float(x, 0) if x.is_finite() && *x >= 0.0 => group_thousands(x.round() as u64),
        Value::Float(x, d) => format!("{x:.d$}"),
        Value::Missing => "-".to_string(),
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("fanout", "2 receivers".to_string());
        r.field("deliveries", "deliveries", Value::Int(1234567));
        r.field(
            "deliveries_per_sec",
            "deliveries/s",
            Value::Float(51234.6, 0),
        );
        r.field("p99_ms", "p99 ms", Value::Float(1.23456, 3));
        r.field("ping_p99_ms", "ping p99 ms", Value::Missing);
        r.notes.push("say \"why\"".to_string());
        r
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(1234567), "1,234,567");
    }

    #[test]
    fn table_aligns_headings_and_values() {
        let t = sample().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "== fanout: 2 receivers");
        assert_eq!(lines[1], "  deliveries  deliveries/s  p99 ms  ping p99 ms");
        assert_eq!(lines[2], "   1,234,567        51,235   1.235            -");
        assert_eq!(lines[3], "  note: say \"why\"");
    }

    #[test]
    fn json_is_one_line_with_nulls_and_escapes() {
        let j = sample().json().expect("serialises");
        assert!(!j.contains('\n'));
        assert_eq!(
            j,
            "{\"scenario\":\"fanout\",\"deliveries\":1234567,\"deliveries_per_sec\":51234.6,\
             \"p99_ms\":1.23456,\"ping_p99_ms\":null,\"notes\":[\"say \\\"why\\\"\"]}"
        );
        assert_eq!(sample().get("deliveries"), Some(&Value::Int(1234567)));
    }

    #[test]
    fn nodes_show_only_for_a_cluster() {
        let mut one = Report::new("dm", "x".to_string());
        one.nodes(1);
        assert_eq!(
            one.json().expect("serialises"),
            "{\"scenario\":\"dm\",\"notes\":[]}"
        );
        let mut two = Report::new("dm", "x".to_string());
        two.nodes(2);
        assert!(two.table().starts_with("== dm: x, over 2 nodes\n"));
        assert_eq!(two.get("nodes"), Some(&Value::Int(2)));
    }

    #[test]
    fn json_escapes_control_characters_and_nulls_non_finite_numbers() {
        let mut r = Report::new("idle", "x".to_string());
        r.field("ratio", "ratio", Value::Float(f64::NAN, 1));
        r.notes.push("a\u{1}\\b\n".to_string());
        assert_eq!(
            r.json().expect("serialises"),
            "{\"scenario\":\"idle\",\"ratio\":null,\"notes\":[\"a\\u0001\\\\b\\n\"]}"
        );
    }
}
