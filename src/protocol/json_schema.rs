//! A tool's JSON Schema as it travels through the IR: the JSON text it arrived in, with the few
//! questions writers ask of it answered by scanning the text rather than building a tree.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// A tool's JSON Schema, kept as the JSON text it arrived in. Most writers send a schema on
/// unchanged, and building a `Value` tree of every schema, serialising it and dropping it was a
/// large part of a converted request's cost; writers that must look inside (Gemini's sanitiser,
/// Anthropic's top-level `type`) read it themselves. Two schemas are equal when they are the same
/// JSON value, whatever their key order and spacing.
#[derive(Clone, Debug)]
pub struct JsonSchema(Box<RawValue>);

impl JsonSchema {
    /// The schema of a tool that declares none: an object with no properties.
    pub fn empty_object() -> JsonSchema {
        JsonSchema::from_value(&serde_json::json!({"type": "object", "properties": {}}))
    }

    /// A schema read as a `Value`.
    pub fn from_value(schema: &Value) -> JsonSchema {
        JsonSchema(serde_json::value::to_raw_value(schema).expect("a Value always serialises"))
    }

    /// A schema as the JSON text it was sent in.
    pub fn from_raw(schema: &RawValue) -> JsonSchema {
        JsonSchema(schema.to_owned())
    }

    /// The schema's JSON text, to be written as it is.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The schema as a `Value`, for writers that rewrite it; `None` for JSON a `Value` cannot
    /// hold (a lone surrogate escape, a number beyond `f64`), which a schema the typed readers
    /// kept as text may contain.
    pub fn to_value(&self) -> Option<Value> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl PartialEq for JsonSchema {
    fn eq(&self, other: &JsonSchema) -> bool {
        self.0.get() == other.0.get()
            || matches!((self.to_value(), other.to_value()), (Some(mine), Some(theirs)) if mine == theirs)
    }
}

impl JsonSchema {
    /// Whether the schema is an object with a top-level member called `name` (of any value);
    /// `None` when the schema is not an object at all.
    pub fn has_top_level_member(&self, name: &str) -> Option<bool> {
        let mut deserializer = serde_json::Deserializer::from_str(self.0.get());
        deserializer.deserialize_map(TopLevelMember { name }).ok()
    }

    /// Whether any object anywhere in the schema has a member whose name `is_wanted`. A
    /// conservative question: a property that happens to be called so counts too.
    pub fn has_member_anywhere(&self, is_wanted: &dyn Fn(&str) -> bool) -> bool {
        let mut deserializer = serde_json::Deserializer::from_str(self.0.get());
        AnyMemberNamed { is_wanted }.deserialize(&mut deserializer).unwrap_or(true)
    }
}

/// Reads an object's member names, skipping the values, and says whether one is `name`.
struct TopLevelMember<'a> {
    name: &'a str,
}

impl<'de> Visitor<'de> for TopLevelMember<'_> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(is_name) = members.next_key_seed(MemberNameIn { is_wanted: &|name| name == self.name })? {
            members.next_value::<IgnoredAny>()?;
            found |= is_name;
        }
        Ok(found)
    }
}

/// Walks a whole JSON value and says whether any member name `is_wanted`.
#[derive(Clone, Copy)]
struct AnyMemberNamed<'a> {
    is_wanted: &'a dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for AnyMemberNamed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyMemberNamed<'_> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(found_inside) = items.next_element_seed(self)? {
            found |= found_inside;
        }
        Ok(found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(is_name) = members.next_key_seed(MemberNameIn { is_wanted: self.is_wanted })? {
            found |= is_name;
            found |= members.next_value_seed(self)?;
        }
        Ok(found)
    }
}

/// A member name, judged by `is_wanted` without allocating it.
struct MemberNameIn<'a> {
    is_wanted: &'a dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for MemberNameIn<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for MemberNameIn<'_> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<bool, E> {
        Ok((self.is_wanted)(name))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use crate::protocol::json_schema::JsonSchema;

    fn schema(text: &str) -> JsonSchema {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        JsonSchema::from_raw(&raw)
    }

    #[test]
    fn top_level_members_are_found_by_name_escaped_or_not() {
        assert_eq!(schema(r#"{"type": "object"}"#).has_top_level_member("type"), Some(true));
        assert_eq!(schema(r#"{"t\u0079pe": null}"#).has_top_level_member("type"), Some(true));
        assert_eq!(schema(r#"{"properties": {"type": {"type": "string"}}}"#).has_top_level_member("type"), Some(false));
        assert_eq!(schema(r#"["type"]"#).has_top_level_member("type"), None);
        assert_eq!(schema(r#""type""#).has_top_level_member("type"), None);
    }

    #[test]
    fn member_names_are_found_at_any_depth_but_not_in_values() {
        let names = |name: &str| name == "$ref" || name == "const";
        assert!(schema(r##"{"anyOf": [{"items": {"$ref": "#/$defs/a"}}]}"##).has_member_anywhere(&names));
        assert!(schema(r#"{"properties": {"const": {"type": "string"}}}"#).has_member_anywhere(&names));
        assert!(!schema(r#"{"enum": ["$ref", "const"], "description": "const"}"#).has_member_anywhere(&names));
        assert!(!schema(r#"[1, 2.5, -3, true, null, {"a": [{}]}]"#).has_member_anywhere(&names));
    }

    #[test]
    fn schemas_are_equal_as_json_values() {
        assert_eq!(schema(r#"{"a": 1, "b": [true]}"#), schema(r#"{ "b" : [ true ], "a" : 1 }"#));
        assert_ne!(schema(r#"{"a": 1}"#), schema(r#"{"a": 2}"#));
    }
}
