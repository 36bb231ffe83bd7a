use uuid::Uuid;

/// A new time-ordered identifier (UUIDv7): sorts by creation time, so indexes on it
/// stay append-mostly and cursors can page by it.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_increase() {
        let first = new_id();
        let second = new_id();
        assert_eq!(first.get_version_num(), 7);
        assert!(second > first);
    }
}
