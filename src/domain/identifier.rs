//! One shape for the validated identifiers (a person's id, a reporting event's id): a string
//! that is not blank, fits a byte limit and holds no control characters.

/// Declares `$name(String)` whose `parse` enforces that shape; errors name `$field`.
macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident { field: $field:literal, max_bytes: $max:expr $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, $crate::domain::ParseError> {
                use $crate::domain::ParseError;
                if value.trim().is_empty() {
                    return Err(ParseError::new($field, "must not be empty"));
                }
                if value.len() > $max {
                    return Err(ParseError::new(
                        $field,
                        format!("is {} bytes, at most {} allowed", value.len(), $max),
                    ));
                }
                if value.chars().any(char::is_control) {
                    return Err(ParseError::new($field, "must not contain control characters"));
                }
                Ok(Self(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

pub(crate) use identifier;
