//! A result row whose columns arrive as text (both database clients ask for text results), and
//! the conversions from a column's text to the store's value types.

use std::marker::PhantomData;

/// A column that does not convert to the requested type, or is not there. The value itself is
/// never quoted (it could be a key).
#[derive(Debug)]
pub struct ColumnError(pub String);

/// A value read from a column's text (`None` is NULL).
pub trait FromColumnText: Sized {
    fn from_column_text(text: Option<&str>) -> Result<Self, String>;
}

fn not_null(text: Option<&str>) -> Result<&str, String> {
    text.ok_or_else(|| "unexpected NULL".to_owned())
}

impl FromColumnText for i64 {
    fn from_column_text(text: Option<&str>) -> Result<i64, String> {
        let text = not_null(text)?;
        if let Ok(number) = text.parse() {
            return Ok(number);
        }
        // A DECIMAL with only zeros after the point (MySQL's `SUM` of integers can be one).
        match text.split_once('.') {
            Some((whole, fraction)) if fraction.bytes().all(|digit| digit == b'0') => {
                whole.parse().map_err(|_| "not an integer".to_owned())
            }
            _ => Err("not an integer".to_owned()),
        }
    }
}

impl FromColumnText for f64 {
    fn from_column_text(text: Option<&str>) -> Result<f64, String> {
        // Rust reads PostgreSQL's "NaN", "Infinity" and "-Infinity" as well as plain numbers.
        not_null(text)?.parse().map_err(|_| "not a number".to_owned())
    }
}

/// PostgreSQL writes booleans as `t` and `f`, MySQL as the integers of its TINYINT(1).
impl FromColumnText for bool {
    fn from_column_text(text: Option<&str>) -> Result<bool, String> {
        match not_null(text)? {
            "t" => Ok(true),
            "f" => Ok(false),
            other => other.parse::<i64>().map(|number| number != 0).map_err(|_| "not a boolean".to_owned()),
        }
    }
}

impl FromColumnText for String {
    fn from_column_text(text: Option<&str>) -> Result<String, String> {
        not_null(text).map(str::to_owned)
    }
}

impl<T: FromColumnText> FromColumnText for Option<T> {
    fn from_column_text(text: Option<&str>) -> Result<Option<T>, String> {
        text.map(|text| T::from_column_text(Some(text))).transpose()
    }
}

/// One result row; `Error` is the client's error type, which a conversion failure becomes.
#[derive(Debug)]
pub struct TextRow<Error> {
    columns: Vec<Option<String>>,
    error: PhantomData<fn() -> Error>,
}

impl<Error: From<ColumnError>> TextRow<Error> {
    pub fn new(columns: Vec<Option<String>>) -> TextRow<Error> {
        TextRow { columns, error: PhantomData }
    }

    /// Column `index` (from 0) as `T`.
    pub fn get<T: FromColumnText>(&self, index: usize) -> Result<T, Error> {
        let column = self
            .columns
            .get(index)
            .ok_or_else(|| ColumnError(format!("the row has no column {index}")))?;
        T::from_column_text(column.as_deref())
            .map_err(|problem| Error::from(ColumnError(format!("column {index}: {problem}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_from_both_servers_text_forms() {
        assert_eq!(i64::from_column_text(Some("-42")).unwrap(), -42);
        assert_eq!(i64::from_column_text(Some("42.000")).unwrap(), 42);
        assert!(i64::from_column_text(Some("42.5")).is_err());
        assert!(i64::from_column_text(None).unwrap_err().contains("NULL"));
        assert!(bool::from_column_text(Some("t")).unwrap());
        assert!(!bool::from_column_text(Some("f")).unwrap());
        assert!(bool::from_column_text(Some("1")).unwrap());
        assert!(!bool::from_column_text(Some("0")).unwrap());
        assert!(bool::from_column_text(Some("yes")).is_err());
        assert_eq!(f64::from_column_text(Some("1e-7")).unwrap(), 1e-7);
        assert_eq!(f64::from_column_text(Some("-Infinity")).unwrap(), f64::NEG_INFINITY);
        assert!(f64::from_column_text(Some("NaN")).unwrap().is_nan());
        assert_eq!(Option::<String>::from_column_text(None).unwrap(), None);
        assert!(String::from_column_text(None).is_err());
    }

    #[test]
    fn a_row_names_the_column_that_does_not_convert() {
        #[derive(Debug)]
        struct TestError(String);
        impl From<ColumnError> for TestError {
            fn from(error: ColumnError) -> TestError {
                TestError(error.0)
            }
        }
        let row = TextRow::<TestError>::new(vec![Some("7".to_owned()), None]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert!(row.get::<i64>(1).unwrap_err().0.contains("column 1: unexpected NULL"));
        assert!(row.get::<i64>(2).unwrap_err().0.contains("no column 2"));
    }
}
