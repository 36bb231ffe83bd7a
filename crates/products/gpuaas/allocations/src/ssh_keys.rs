//! SSH public keys users register for runtime access.
//!
//! A key is parsed down to its SSH wire blob before it is stored, so what reaches a
//! node's `authorized_keys` is exactly one well-formed public key line and the
//! fingerprint users see is the one `ssh-keygen -lf` prints. Private keys are refused
//! without their text ever appearing in an error, a log line or the database.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use gpuaas_kernel::cursor::MAX_PAGE_LIMIT;
use gpuaas_kernel::{Cursor, PageError, ResourceType, Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Dialect, Row};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::{Actor, AllocationError, Allocations};

/// How many keys one user may hold; more is a sign of a script gone wrong, and every
/// key is installed on every allocation that names it.
pub const MAX_KEYS_PER_USER: usize = 50;
/// RSA below this is no longer a safe choice for new keys.
pub const MIN_RSA_BITS: u32 = 3072;
const MAX_NAME_CHARS: usize = 64;
const MAX_COMMENT_CHARS: usize = 200;

const KEY_COLUMNS: &str = "id, user_id, name, key_type, public_key, fingerprint, created_at";

/// Text that only ever appears in private key files: PEM and OpenSSH headers (`BEGIN
/// OPENSSH PRIVATE KEY`, `BEGIN SSH2 ENCRYPTED PRIVATE KEY`, …), PuTTY's `.ppk`, and the
/// base64 of OpenSSH's private format magic (`openssh-key-v1\0`), which catches a body
/// pasted without its header.
const PRIVATE_KEY_MARKERS: &[&str] = &["PRIVATE KEY", "PuTTY-User-Key-File", "Private-Lines:", "b3BlbnNzaC1rZXktdjEA"];
const PRIVATE_KEY_MESSAGE: &str = "this is a private key; paste the public key (the .pub file) instead";
const SUPPORTED_TYPES: &str = "ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of at least 3072 bits, \
     sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com";

/// A public key that passed every check, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub key_type: String,
    /// `type base64 [comment]`, single-spaced: the line that goes into `authorized_keys`.
    pub public_key: String,
    /// `SHA256:` and the unpadded base64 of the blob's SHA-256, as `ssh-keygen -lf` prints.
    pub fingerprint: String,
    pub bits: Option<u32>,
}

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SshKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The OpenSSH public key line, `type base64 [comment]`.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// One page of keys, newest first; `next_cursor` is absent on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SshKeyPage {
    pub items: Vec<SshKey>,
    pub next_cursor: Option<String>,
}

fn invalid_key(message: impl Into<String>) -> AllocationError {
    AllocationError::invalid("public_key", message)
}

/// Reads SSH wire-format fields (RFC 4251 §5) off the front of a key blob.
struct WireReader<'a> {
    rest: &'a [u8],
}

impl<'a> WireReader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let (length, rest) = self.rest.split_first_chunk::<4>()?;
        let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
        if rest.len() < length {
            return None;
        }
        let (value, rest) = rest.split_at(length);
        self.rest = rest;
        Some(value)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Bits of a non-negative mpint, not counting leading zero bytes.
fn mpint_bits(value: &[u8]) -> Option<u32> {
    if value.first().is_some_and(|&first| first & 0x80 != 0) {
        return None;
    }
    let significant = value.iter().position(|&byte| byte != 0).map_or(&[][..], |start| &value[start..]);
    let Some(&first) = significant.first() else { return Some(0) };
    let whole_bytes = u32::try_from(significant.len() - 1).ok()?;
    whole_bytes.checked_mul(8)?.checked_add(8 - first.leading_zeros())
}

/// The size of each key type's public point, which pins the curve down a second time.
fn ecdsa_point_len(curve: &[u8]) -> Option<(usize, u32)> {
    match curve {
        b"nistp256" => Some((65, 256)),
        b"nistp384" => Some((97, 384)),
        b"nistp521" => Some((133, 521)),
        _ => None,
    }
}

/// Walks the blob of `key_type` and returns the key size in bits. Every field must be
/// present and nothing may follow the last one.
fn blob_bits(key_type: &str, blob: &[u8]) -> Result<u32, AllocationError> {
    let malformed = || invalid_key("the key body is malformed; paste the .pub file unchanged");
    let mut reader = WireReader { rest: blob };
    // The line validator already compared this name with the line's type.
    reader.string().ok_or_else(malformed)?;
    let bits = match key_type {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => {
            if reader.string().ok_or_else(malformed)?.len() != 32 {
                return Err(malformed());
            }
            256
        }
        "ssh-rsa" => {
            let exponent = reader.string().ok_or_else(malformed)?;
            if mpint_bits(exponent).is_none_or(|bits| bits == 0) {
                return Err(malformed());
            }
            let modulus = reader.string().ok_or_else(malformed)?;
            let bits = mpint_bits(modulus).ok_or_else(malformed)?;
            if bits < MIN_RSA_BITS {
                return Err(invalid_key(format!(
                    "RSA keys must have at least {MIN_RSA_BITS} bits and this one has {bits}; \
                     generate an Ed25519 key with `ssh-keygen -t ed25519` instead"
                )));
            }
            bits
        }
        _ => {
            // ecdsa-sha2-<curve> and sk-ecdsa-sha2-<curve>@openssh.com name their curve
            // twice: in the type and as the blob's second field.
            let expected = key_type
                .trim_start_matches("sk-")
                .trim_end_matches("@openssh.com")
                .strip_prefix("ecdsa-sha2-")
                .ok_or_else(malformed)?;
            let curve = reader.string().ok_or_else(malformed)?;
            if curve != expected.as_bytes() {
                return Err(invalid_key("the key's curve does not match its type"));
            }
            let (point_len, bits) = ecdsa_point_len(curve).ok_or_else(malformed)?;
            let point = reader.string().ok_or_else(malformed)?;
            if point.len() != point_len || point.first() != Some(&0x04) {
                return Err(malformed());
            }
            bits
        }
    };
    if key_type.starts_with("sk-") {
        // The FIDO application, usually `ssh:`.
        reader.string().ok_or_else(malformed)?;
    }
    if !reader.is_empty() {
        return Err(malformed());
    }
    Ok(bits)
}

/// Checks one pasted OpenSSH public key and normalises it.
///
/// The input is never quoted back: a user who pastes the wrong file must not find their
/// private key in an error message, a log or a support ticket.
pub fn parse_public_key(text: &str) -> Result<ParsedKey, AllocationError> {
    if PRIVATE_KEY_MARKERS.iter().any(|marker| text.contains(marker)) {
        return Err(invalid_key(PRIVATE_KEY_MESSAGE));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid_key("paste one OpenSSH public key line, such as the contents of ~/.ssh/id_ed25519.pub"));
    }
    if text.starts_with("---- BEGIN SSH2 PUBLIC KEY") {
        return Err(invalid_key(
            "this is an RFC 4716 (SSH2) public key; convert it with `ssh-keygen -i -f FILE` and paste the one-line result",
        ));
    }
    if text.contains(['\n', '\r']) {
        return Err(invalid_key("paste exactly one key line"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid_key("the key must be printable text, without tabs or control characters"));
    }
    let mut fields = text.split(' ').filter(|field| !field.is_empty());
    let key_type = fields.next().unwrap_or_default();
    if key_type.contains(['=', '"', ',']) {
        return Err(invalid_key("key options such as command= or from= are not allowed; paste only the key"));
    }
    let body = fields.next().unwrap_or_default();
    if body.is_empty() {
        return Err(invalid_key("the key line has no base64 body; paste the whole line"));
    }
    let comment = fields.collect::<Vec<_>>().join(" ");
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(invalid_key(format!("the key's comment must be at most {MAX_COMMENT_CHARS} characters")));
    }
    let public_key =
        if comment.is_empty() { format!("{key_type} {body}") } else { format!("{key_type} {body} {comment}") };
    gpuaas_nodeagent_protocol::tasks::validate_public_key_line(&public_key).map_err(|error| {
        if error.starts_with("unsupported key type") {
            invalid_key(format!("unsupported key type; use {SUPPORTED_TYPES}"))
        } else {
            // The validator's messages are fixed text and never quote the key.
            invalid_key(error)
        }
    })?;
    let blob = STANDARD.decode(body).map_err(|_| invalid_key("key body is not base64"))?;
    let bits = blob_bits(key_type, &blob)?;
    let fingerprint = format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)));
    Ok(ParsedKey { key_type: key_type.to_owned(), public_key, fingerprint, bits: Some(bits) })
}

fn check_name(name: &str) -> Result<&str, AllocationError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AllocationError::invalid("name", format!("1 to {MAX_NAME_CHARS} printable characters")));
    }
    Ok(name)
}

fn key_from_row(row: &Row) -> Result<SshKey, AllocationError> {
    Ok(SshKey {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        key_type: row.try_get("key_type")?,
        public_key: row.try_get("public_key")?,
        fingerprint: row.try_get("fingerprint")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    })
}

/// Serializes key changes of one user until the transaction ends, so two concurrent
/// adds cannot both see room under the per-user limit. SQLite's `BEGIN IMMEDIATE`
/// already holds the database write lock.
async fn lock_user_keys(
    connection: &mut gpuaas_store::Connection,
    dialect: Dialect,
    user_id: &str,
) -> Result<(), AllocationError> {
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 11))) AS locked")
            .bind(user_id)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// The keys with these ids, whoever owns them, in one statement: a batch of creates
/// reads all its keys at once, inside its transaction, and checks each request's with
/// [`owned_keys`] to snapshot its `authorized_keys`.
pub(crate) async fn keys_by_id(
    connection: &mut gpuaas_store::Connection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, SshKey>, AllocationError> {
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let batch = gpuaas_store::Padded::new(ids, gpuaas_store::LIST_PADDING_MOST);
    let placeholders = batch.placeholders(1);
    let sql = format!("SELECT {KEY_COLUMNS} FROM ssh_keys WHERE id IN ({placeholders})");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, _) in batch.rows() {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(&mut *connection).await?;
    rows.iter().map(|row| key_from_row(row).map(|key| (key.id.clone(), key))).collect()
}

/// `user_id`'s keys among `found`, in the order of `ids`; a key that is missing or
/// another user's is refused alike, as unknown.
pub(crate) fn owned_keys(
    found: &std::collections::HashMap<String, SshKey>,
    user_id: &str,
    ids: &[&str],
) -> Result<Vec<SshKey>, AllocationError> {
    ids.iter()
        .map(|id| {
            found
                .get(*id)
                .filter(|key| key.user_id == user_id)
                .cloned()
                .ok_or_else(|| AllocationError::invalid("ssh_key_ids", format!("unknown ssh key {}", shown_id(id))))
        })
        .collect()
}

/// An id as an error message may quote it: ids are short and plain, anything else is
/// not one and is not repeated back.
fn shown_id(id: &str) -> &str {
    let plain = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain { id } else { "(not an id)" }
}

impl Allocations {
    /// The canonical id of a key, as audit rows name it: in the owner's tenant when the
    /// owner is the one acting.
    fn ssh_key_target(&self, actor: &Actor, user_id: &str, id: &str) -> String {
        let tenant = actor.tenant_id.as_deref().filter(|_| actor.id == user_id);
        self.inner.resource_ids.name(tenant, None, ResourceType::SshKey, id)
    }

    /// Registers `public_key` for `user_id` under `name`.
    pub async fn add_ssh_key(
        &self,
        actor: &Actor,
        user_id: &str,
        name: &str,
        public_key: &str,
    ) -> Result<SshKey, AllocationError> {
        let name = check_name(name)?;
        let parsed = parse_public_key(public_key)?;
        let mut tx = self.store().begin().await?;
        lock_user_keys(&mut tx, self.store().dialect(), user_id).await?;
        let existing = sqlx::query("SELECT name FROM ssh_keys WHERE user_id = $1 AND fingerprint = $2")
            .bind(user_id)
            .bind(&parsed.fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            let existing_name: String = row.try_get("name")?;
            return Err(AllocationError::Conflict(format!("this key is already registered as `{existing_name}`")));
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ssh_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if usize::try_from(count).is_ok_and(|count| count >= MAX_KEYS_PER_USER) {
            return Err(AllocationError::Conflict(format!(
                "a user may register at most {MAX_KEYS_PER_USER} SSH keys; delete one first"
            )));
        }
        let key = SshKey {
            id: new_id().to_string(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            key_type: parsed.key_type,
            public_key: parsed.public_key,
            fingerprint: parsed.fingerprint,
            created_at: Timestamp::now(),
        };
        let inserted = sqlx::query(
            "INSERT INTO ssh_keys (id, user_id, name, key_type, public_key, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.user_id)
        .bind(&key.name)
        .bind(&key.key_type)
        .bind(&key.public_key)
        .bind(&key.fingerprint)
        .bind(key.created_at.as_micros())
        .execute(&mut *tx)
        .await;
        match inserted {
            // The lock above makes this unreachable in practice; kept so a duplicate can
            // never surface as a 500.
            Err(error) if gpuaas_store::is_unique_violation(&error) => {
                return Err(AllocationError::Conflict("this key is already registered".into()));
            }
            other => other?,
        };
        let entry = actor.entry(
            "ssh_key.add",
            self.ssh_key_target(actor, user_id, &key.id),
            serde_json::json!({
                "user_id": key.user_id,
                "name": key.name,
                "key_type": key.key_type,
                "bits": parsed.bits,
                "fingerprint": key.fingerprint,
            }),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The user's keys, newest first. `cursor` is the previous page's `next_cursor`;
    /// `limit` must be 1..=`MAX_PAGE_LIMIT`.
    pub async fn list_ssh_keys(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<SshKeyPage, AllocationError> {
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(PageError::InvalidLimit.into());
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        // One row more than asked tells whether another page follows.
        let fetch = i64::from(limit) + 1;
        let rows = match &after {
            None => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM ssh_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(fetch).fetch_all(self.store().pool()).await?
            }
            Some(after) => {
                // `id` breaks ties between equal timestamps, so no key is skipped or repeated.
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM ssh_keys WHERE user_id = $1 \
                     AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(user_id)
                    .bind(after.sort_key)
                    .bind(&after.id)
                    .bind(fetch)
                    .fetch_all(self.store().pool())
                    .await?
            }
        };
        let mut items = rows.iter().map(key_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
        } else {
            None
        };
        Ok(SshKeyPage { items, next_cursor })
    }

    /// Removes one of the user's keys. Another user's key is as unknown as a missing
    /// one. Allocations that already installed the key keep it until they are released.
    pub async fn delete_ssh_key(&self, actor: &Actor, user_id: &str, key_id: &str) -> Result<(), AllocationError> {
        let mut tx = self.store().begin().await?;
        lock_user_keys(&mut tx, self.store().dialect(), user_id).await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM ssh_keys WHERE id = $1 AND user_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key_id).bind(user_id).fetch_optional(&mut *tx).await?;
        let key = row.as_ref().map(key_from_row).transpose()?.ok_or(AllocationError::NotFound("ssh key"))?;
        sqlx::query("DELETE FROM ssh_keys WHERE id = $1 AND user_id = $2")
            .bind(&key.id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let entry = actor.entry(
            "ssh_key.delete",
            self.ssh_key_target(actor, user_id, &key.id),
            serde_json::json!({
                "user_id": key.user_id,
                "name": key.name,
                "key_type": key.key_type,
                "fingerprint": key.fingerprint,
            }),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated for these tests with OpenSSH 9.2 (`ssh-keygen -t … -N ''`); the
    // fingerprints are what `ssh-keygen -lf` printed for each .pub file.
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINY6MmjpJ3fToEmN+TUJWP99pGRIjTHNu6TQbe1cxnby alice@laptop";
    const ED25519_FP: &str = "SHA256:ApC8H9azXe3FK92XkNlL6BzBlHz9h25bYoqkK71O41o";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBodXtmr5JMoB7Ccnxax5+8dWZKRFNJl8nXIXaQid5nECi6J4wqBf6Olz7Flm9BHTEOZou89KqmzgphUCAna5+A= user@host-ecdsa256";
    const ECDSA256_FP: &str = "SHA256:yGHpWlLLR7s1/6Gk2oxeqZKa1mYcsdagtFzChGAeSEk";
    const ECDSA384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBMAgx9mvGZE/gEZBkyPqXg62DesuHqc8lV7u9QwKwTBVcJWY3T+VDypVIssVSGueHaqlIzCnpXtPdo3V4Gmh1kEqPO5obqiyp+p7PI7S2wUwpYVUPArmdlJOBhTIXJgdVw== user@host-ecdsa384";
    const ECDSA384_FP: &str = "SHA256:xFTVKcJxYNDdjcQ0zKl9eyY7n9MfAxAvmhsgUsnxJeA";
    const ECDSA521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAEV0QKUjbq0vdipCveMFaow3vkXwR5VFpN5iJSSjX3yW8Qqy0v5yUiOPuzV3JaCjZm8emSvTkJL9v3QJjJy1KxZ7wEm314RDXiKBwb985eX55Ky3eT5tNpQjdI9LTiRJglwjMK7x5fUbIOesWaoo9vmYSWjNQT2ImjjakyPoN68VF1mvg== user@host-ecdsa521";
    const ECDSA521_FP: &str = "SHA256:yKN3SBq36wuuJs1ySf0QqKdTSNZFqA7PhJwpyyfNcY0";
    const RSA3072: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCWITM6eIwMsM/uaVjwblcwYArxbgHjpACYTFMzpsF9WXEzPRBd3gA4cHexpC43J0xZBvwxKr5JsCzZ/aqB4CNtoC0BynpalUJDKtQFfTZY5l/IpluuvbL+q+FRQ0e8UDYp5KDTPuquFCJl0GGUKBlNftPBe5DHpTZTzIgGQT4bEyL9gXkpupHKxthqsam84K2M/ONvwpIw4nm2Fd5Uy1KFGrgYE9HzzY9rnvNw6VD84Z2zEnEPym6a3ommac+LpFplqIB8WYw5NviT3u7gj6YakvFyWC6Q1i5twZGqZfFolnAXYYyBeMd5ZGUXHfrbZ26tXIcB+35aHiDSQLrXDfIppTjuLwmHfASXHxdU5LpsVYZByOAju0omrN+0FA/Z81nI8G84l4GF2KaflBk99qZIqfZhp7x7LCT3ptQY97OBTUvKCy6qmlBkeACCf7mU4rPSlKUAfqGIOQHrgOVvMmD0LMdeLrdA0rUnfOz7gpgi+PtgaCrvfhQWdTcubcmGL4E= user@host-rsa3072";
    const RSA3072_FP: &str = "SHA256:ZDnYKUghdKqRG6N1VFx/oMrhQZj0XqTSWHVAR4uJKTg";
    const RSA4096: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAACAQC9J19j/yWG+blHYV+0TVv1+dQxuCjQk+fmpnSMZqsGKingvR8uQ0KTJGoDglS3o4k12zF2PkQ3AQcGb4vsWI3/i6h3cpsmeUiJePCUE2IUKN6P4+oWUTykrOdhx+x5SA2zyOsIcj/eiBr23Sx5Jfc+suEpo1ontlpl2yYl6LqjFUzdG1t01GTO0RNUtoKuyHCJnYfbkJhGeGir/aiyaNll6CBbeIZA3S2wCbh6Dj9qm+ZfUWw4MIehPw6vrygs1Qa1B2J5WOcmfVZB/5iE8zWcs1TbTYqNd+sFksvM6d1pA79rNQw3XY6hPnKyTdZXP+9UZ40sYB2Cgosge3YaDCFcrxYDlH35J6XDDiPP+K8ldmVP7C6MoESKk0u8GDdSQPwi30t2d7u7q9L44MI2IY37Fu22nU0qoqkxVyLkt5euZMhqR4eDbBiFJSjiq9Im9NF/zO0AfAffHxLixe3PA+ktl4aGpwqdIWjfgzAqPr/U50EhIXRf0TwnPq98nAAIL2nlxktILqNKMiuHQ2rSV1fdou/eKxkbrJM0Q02MQSRSZLImtcMq3W3neQdNM8F0ZkMOjkGSyyDAY4xindXc0v/8gIN2xOM78wgrd1tU7HRqLq3Bl5BO49CO1jlK1MJBqkZ5qNnLNgxI9RO5jBgr1q6BwYxZbxkeXGBS5rvooUoyHw== user@host-rsa4096";
    const RSA4096_FP: &str = "SHA256:kmqQGzLkQukR+a9s7G6YT0ixR2n95y/NqbxjsAQxzhU";
    const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCXJ52leLJAKwz9lVa2piJ1r76C/Fcq7gS+yP/2Qx+8gWiVOLBgvKrTotLsdFgXUKppVBXdKv5fSKVJtrbb06AV8qN4kC+VwGVpaaA3yT0eXZt3Ds24bhfbvVlEZ1O5/N05EKbAppr/WSCK4PESdqEq7Zp8b30DM6oAoUGCjNk1qZo1Ak6y/fuA100Ayy2M0k2FuBBg/JePy3QXJMoBY0BF2Zr8NkxMjltlQ6ISLmbW47BmSbY9VNUqOdvMRKcDRU+vXv93MNlBQ/DmxP9Ou4KdAY1Wbve1uBPGaCkddmUCAzfMrd4NUP0evt8/wUxYPtQ6Oay+/6IL5TkRfwjvQcqd user@host-rsa2048";
    // FIDO keys need a token to generate; these blobs were assembled by hand (the
    // sk-ecdsa point is the nistp256 key's above) and fingerprinted with `ssh-keygen -lf`.
    const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gAAAABHNzaDo= bob@yubikey";
    const SK_ED25519_FP: &str = "SHA256:nX0hpi5mKbTIJ10yBq5/sLQhiI1Y0RBAqN0drDdgJWs";
    const SK_ECDSA: &str = "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBBodXtmr5JMoB7Ccnxax5+8dWZKRFNJl8nXIXaQid5nECi6J4wqBf6Olz7Flm9BHTEOZou89KqmzgphUCAna5+AAAAAEc3NoOg== bob@yubikey";
    const SK_ECDSA_FP: &str = "SHA256:Czc+MwS0AQNc4BGjmaASKgc4q4BBI7hrmhb22bGAPVY";
    // Not a key, so no key material ships for a secret scanner to flag: the base64 of
    // OpenSSH's `openssh-key-v1\0` magic, a note saying so, then SHA-256-chained filler,
    // laid out like a real file (header, 70-column body, footer). The magic must stay
    // first: it is what refuses the body pasted without its header lines.
    const OPENSSH_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAZ3B1YWFzIHRlc3QgZml4dHVyZSwgbm90IGEga2V5AP9guMbiAV
K5d7bsSt3zmWkkaCp4YyLwWdvvKFvNuloRuIaBinOiw1jWShVDNnQE38DNCwbjTsTUg9M+
2H52sY6l6Us7LTMt6/81nubzZdJIwz8XCdoy/QBKFfsVxdrk8U0eSN/Leig0/qrfnyoitt
0J+HqKneTl7kVA6HSjuL/QAUJXRi7aU2N5B2n9nsH5fv6b4fDu0g==
-----END OPENSSH PRIVATE KEY-----
";

    fn parsed(text: &str) -> ParsedKey {
        parse_public_key(text).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The message of a refusal about `public_key`.
    fn refusal(text: &str) -> String {
        match parse_public_key(text) {
            Err(AllocationError::Invalid { field, message }) => {
                assert_eq!(field, "public_key");
                message
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn ssh_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(bytes.len()).unwrap_or_else(|e| panic!("{e}")).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn line(key_type: &str, fields: &[&[u8]]) -> String {
        let mut blob = ssh_string(key_type.as_bytes());
        for field in fields {
            blob.extend(ssh_string(field));
        }
        format!("{key_type} {}", STANDARD.encode(blob))
    }

    #[test]
    fn accepts_every_supported_type_with_ssh_keygen_fingerprints() {
        let cases = [
            (ED25519, "ssh-ed25519", ED25519_FP, 256),
            (ECDSA256, "ecdsa-sha2-nistp256", ECDSA256_FP, 256),
            (ECDSA384, "ecdsa-sha2-nistp384", ECDSA384_FP, 384),
            (ECDSA521, "ecdsa-sha2-nistp521", ECDSA521_FP, 521),
            (RSA3072, "ssh-rsa", RSA3072_FP, 3072),
            (RSA4096, "ssh-rsa", RSA4096_FP, 4096),
            (SK_ED25519, "sk-ssh-ed25519@openssh.com", SK_ED25519_FP, 256),
            (SK_ECDSA, "sk-ecdsa-sha2-nistp256@openssh.com", SK_ECDSA_FP, 256),
        ];
        for (text, key_type, fingerprint, bits) in cases {
            let key = parsed(text);
            assert_eq!(key.key_type, key_type, "{text}");
            assert_eq!(key.fingerprint, fingerprint, "{text}");
            assert_eq!(key.bits, Some(bits), "{text}");
            assert_eq!(key.public_key, text, "an ssh-keygen line is already normal");
        }
    }

    #[test]
    fn normalises_whitespace_and_keeps_the_comment() {
        let key = parsed(&format!("\n  {}  \r\n", ED25519.replacen(' ', "   ", 2)));
        assert_eq!(key.public_key, ED25519);
        let bare = ED25519.rsplit_once(' ').map_or(ED25519, |(line, _)| line);
        let key = parsed(bare);
        assert_eq!(key.public_key, bare);
        assert_eq!(key.fingerprint, ED25519_FP, "the comment is not part of the fingerprint");
        let key = parsed(&format!("{bare} Alice's  laptop (work)"));
        assert_eq!(key.public_key, format!("{bare} Alice's laptop (work)"));
        let key = parsed(&format!("{bare} {}", "é".repeat(MAX_COMMENT_CHARS)));
        assert!(key.public_key.ends_with('é'));
    }

    #[test]
    fn refuses_small_rsa_keys() {
        let message = refusal(RSA2048);
        assert!(message.contains("3072") && message.contains("2048"), "{message}");
        // 3071 significant bits behind a zero byte still count as 3071.
        let mut modulus = vec![0u8, 0x7f];
        modulus.extend(std::iter::repeat_n(0xab, 383));
        assert!(refusal(&line("ssh-rsa", &[&[1, 0, 1], &modulus])).contains("3071"));
        modulus[1] = 0xff;
        modulus.remove(0);
        assert!(refusal(&line("ssh-rsa", &[&[1, 0, 1], &modulus])).contains("malformed"), "a negative modulus");
        let mut modulus = vec![0u8, 0x80];
        modulus.extend(std::iter::repeat_n(0xab, 383));
        assert_eq!(parsed(&line("ssh-rsa", &[&[1, 0, 1], &modulus])).bits, Some(3072));
    }

    #[test]
    fn refuses_private_keys_without_echoing_them() {
        let putty = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: alice\nPublic-Lines: 2\n\
                     AAAAC3NzaC1lZDI1NTE5AAAAINY6MmjpJ3fToEmN+TUJWP99pGRIjTHNu6TQbe1cxnby\n\
                     Private-Lines: 1\nAAAAIBn8d3ZkZXNlY3JldA==\nPrivate-MAC: 00ff\n";
        let pem_body = OPENSSH_PRIVATE.lines().filter(|line| !line.starts_with("-----")).collect::<Vec<_>>();
        let cases = [
            OPENSSH_PRIVATE.to_owned(),
            format!("  {OPENSSH_PRIVATE}  "),
            pem_body.join("\n"),
            pem_body.concat(),
            putty.to_owned(),
            "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nAAAA\n---- END SSH2 ENCRYPTED PRIVATE KEY ----".to_owned(),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----".to_owned(),
            format!("{ED25519}\n{OPENSSH_PRIVATE}"),
        ];
        for text in cases {
            let error = parse_public_key(&text).err().unwrap_or_else(|| panic!("accepted a private key"));
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(PRIVATE_KEY_MESSAGE), "{shown}");
            for line in text.lines().filter(|line| line.len() > 8) {
                assert!(!shown.contains(line.trim()), "the error quotes the key: {shown}");
            }
        }
    }

    #[test]
    fn refuses_options_other_formats_and_garbage() {
        assert!(refusal(&format!("command=\"x\" {ED25519}")).contains("options"));
        assert!(refusal(&format!("no-pty,from=\"10.0.0.1\" {ED25519}")).contains("options"));
        assert!(refusal(&format!("{ED25519}\n{ECDSA256}")).contains("one key line"));
        assert!(refusal("").contains("paste one"));
        assert!(refusal("   \n ").contains("paste one"));
        assert!(refusal("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----").contains("RFC 4716"));
        assert!(refusal("ssh-dss AAAAB3NzaC1kc3MAAACBAP").contains("unsupported key type"));
        assert!(refusal("ssh-ed25519").contains("no base64 body"));
        assert!(refusal("ssh-ed25519 not!base64").contains("base64"));
        assert!(refusal(&ED25519.replacen("ssh-ed25519", "ssh-rsa", 1)).contains("does not match"));
        assert!(refusal(&format!("{ED25519} tab\there")).contains("printable"));
        let long = format!("{ED25519} {}", "x".repeat(MAX_COMMENT_CHARS));
        assert!(refusal(&long).contains("comment"));
        // Truncated or padded blobs.
        assert!(refusal(&line("ssh-ed25519", &[&[7; 31]])).contains("malformed"));
        assert!(refusal(&line("ssh-ed25519", &[&[7; 32], b"extra"])).contains("malformed"));
        assert!(refusal(&line("ssh-rsa", &[&[1, 0, 1]])).contains("malformed"));
        assert!(refusal(&line("sk-ssh-ed25519@openssh.com", &[&[7; 32]])).contains("malformed"));
        let mut point = vec![4u8];
        point.extend([9u8; 96]);
        let mismatched = line("ecdsa-sha2-nistp256", &[b"nistp384", &point]);
        assert!(refusal(&mismatched).contains("curve"));
        assert!(refusal(&line("ecdsa-sha2-nistp384", &[b"nistp384", &point[..65]])).contains("malformed"));
        assert_eq!(parsed(&line("ecdsa-sha2-nistp384", &[b"nistp384", &point])).bits, Some(384));
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(check_name("  laptop  ").ok(), Some("laptop"));
        assert!(check_name(&"n".repeat(64)).is_ok());
        for bad in ["", "   ", "line\nbreak", "tab\tname"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"n".repeat(65)).is_err());
    }

    #[test]
    fn ids_are_quoted_only_when_plain() {
        assert_eq!(shown_id("01JABCDEF-xyz_1"), "01JABCDEF-xyz_1");
        assert_eq!(shown_id("x' OR 1=1"), "(not an id)");
        assert_eq!(shown_id(&"a".repeat(65)), "(not an id)");
    }

    mod database {
        use gpuaas_store::{PoolSettings, Store};
        use gpuaas_testkit::{Backend, TestDatabase, both_backends};

        use super::*;

        async fn insert(store: &Store, id: &str, user_id: &str, text: &str, at: i64) {
            let key = parsed(text);
            sqlx::query(
                "INSERT INTO ssh_keys (id, user_id, name, key_type, public_key, fingerprint, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(user_id)
            .bind(format!("key {id}"))
            .bind(&key.key_type)
            .bind(&key.public_key)
            .bind(&key.fingerprint)
            .bind(at)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }

        async fn owned_keys_keep_order_and_refuse_foreign_keys(backend: Backend) {
            let database = TestDatabase::create(backend).await;
            let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
            store.migrate(crate::MIGRATIONS).await.unwrap_or_else(|e| panic!("{e}"));
            insert(&store, "k1", "alice", ED25519, 1).await;
            insert(&store, "k2", "alice", ECDSA256, 2).await;
            insert(&store, "k3", "bob", RSA3072, 3).await;
            let mut connection = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
            let found = keys_by_id(&mut connection, &["k1", "k2", "k3", "nope", "x' OR '1'='1"])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.len(), 3, "the three stored keys, whoever owns them");
            assert!(keys_by_id(&mut connection, &[]).await.unwrap_or_else(|e| panic!("{e}")).is_empty());

            let keys = owned_keys(&found, "alice", &["k2", "k1"]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(keys.iter().map(|key| key.id.as_str()).collect::<Vec<_>>(), ["k2", "k1"]);
            assert_eq!(keys[1].public_key, ED25519);
            assert_eq!(keys[1].created_at, Timestamp::from_micros(1));

            for (list, needle) in [
                (vec!["k1", "k3"], "unknown ssh key k3"),
                (vec!["nope"], "unknown ssh key nope"),
                (vec!["x' OR '1'='1"], "unknown ssh key (not an id)"),
            ] {
                match owned_keys(&found, "alice", &list) {
                    Err(AllocationError::Invalid { field, message }) => {
                        assert_eq!(field, "ssh_key_ids");
                        assert!(message.contains(needle), "{message}");
                    }
                    other => panic!("expected a refusal for {list:?}, got {other:?}"),
                }
            }
        }

        both_backends!(owned_keys_keep_order_and_refuse_foreign_keys);
    }
}
