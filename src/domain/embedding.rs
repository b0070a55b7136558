//! The rules an embedding (or a search vector) must meet, written once for every path that
//! takes one: REST and MCP writes, Factory ingest, and search.

/// Why a vector is refused. [`EmbeddingError::describe`] words it for the field it came in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmbeddingError {
    /// Not `vector.dimensions` long.
    Length { actual: usize, expected: usize },
    /// A value beyond what a 32-bit float holds, as sent.
    BeyondF32(f64),
    /// NaN or infinite.
    NotFinite,
    /// All zeros: no direction to compare.
    AllZero,
}

impl EmbeddingError {
    /// The message for a refusal of the field `what` (`embedding`, `vector`).
    pub fn describe(self, what: &str) -> String {
        match self {
            EmbeddingError::Length { actual, expected } => format!(
                "{what} has {actual} dimensions; this server expects {expected} (vector.dimensions)"
            ),
            EmbeddingError::BeyondF32(x) => format!("{what} value {x} is beyond a 32-bit float"),
            EmbeddingError::NotFinite => format!("{what} values must be finite 32-bit floats"),
            EmbeddingError::AllZero => {
                format!("{what} must not be all zeros (it has no direction to compare)")
            }
        }
    }
}

/// The values as 32-bit floats, as they are kept; a value beyond f32 is refused by name
/// (parsing as f64 first makes it a 422 rather than a syntax error).
pub fn narrow(values: &[f64]) -> Result<Vec<f32>, EmbeddingError> {
    values
        .iter()
        .map(|&x| {
            let narrowed = x as f32;
            if narrowed.is_finite() {
                Ok(narrowed)
            } else {
                Err(EmbeddingError::BeyondF32(x))
            }
        })
        .collect()
}

/// Whether `vector` can be kept and compared: `dimensions` long, finite, not all zeros.
pub fn check(vector: &[f32], dimensions: usize) -> Result<(), EmbeddingError> {
    if vector.len() != dimensions {
        return Err(EmbeddingError::Length {
            actual: vector.len(),
            expected: dimensions,
        });
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(EmbeddingError::NotFinite);
    }
    if vector.iter().all(|x| *x == 0.0) {
        return Err(EmbeddingError::AllZero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_must_have_the_length_finite_values_and_a_direction() {
        assert_eq!(check(&[1.0, 0.0], 2), Ok(()));
        assert_eq!(
            check(&[1.0], 2),
            Err(EmbeddingError::Length {
                actual: 1,
                expected: 2
            })
        );
        assert_eq!(check(&[f32::NAN, 1.0], 2), Err(EmbeddingError::NotFinite));
        assert_eq!(check(&[0.0, 0.0], 2), Err(EmbeddingError::AllZero));
        assert_eq!(
            EmbeddingError::AllZero.describe("vector"),
            "vector must not be all zeros (it has no direction to compare)"
        );
    }

    #[test]
    fn narrowing_refuses_what_f32_cannot_hold() {
        assert_eq!(narrow(&[0.5, -2.0]), Ok(vec![0.5, -2.0]));
        assert_eq!(narrow(&[1e300]), Err(EmbeddingError::BeyondF32(1e300)));
    }
}
