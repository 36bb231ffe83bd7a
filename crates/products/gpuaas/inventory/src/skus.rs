//! The SKU catalog: what a node of each kind offers and what a GPU-hour on it costs.

use gpuaas_kernel::{ResourceType, Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Row, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Actor, InventoryError, NodePlane, bool_flag};

const SKU_COLUMNS: &str = "id, name, display_name, gpu_model, gpus_per_node, gpu_memory_mib, vcpus_per_node, \
     memory_bytes_per_node, price_per_gpu_hour_minor, currency, active, created_at, updated_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Sku {
    pub id: String,
    /// Stable machine name, e.g. `h100-80gb-x8`.
    pub name: String,
    pub display_name: String,
    pub gpu_model: String,
    pub gpus_per_node: i64,
    pub gpu_memory_mib: i64,
    pub vcpus_per_node: i64,
    pub memory_bytes_per_node: i64,
    /// Price of one GPU for one hour, in minor units of `currency` (cents for USD).
    pub price_per_gpu_hour_minor: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    pub active: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSku {
    pub name: String,
    pub display_name: Option<String>,
    pub gpu_model: String,
    pub gpus_per_node: i64,
    pub gpu_memory_mib: i64,
    pub vcpus_per_node: i64,
    pub memory_bytes_per_node: i64,
    pub price_per_gpu_hour_minor: i64,
    pub currency: String,
}

/// Fields an operator may change; omitted fields stay. GPU count is fixed once nodes
/// exist, since their slots were cut from it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuUpdate {
    pub display_name: Option<String>,
    pub gpu_model: Option<String>,
    pub gpu_memory_mib: Option<i64>,
    pub vcpus_per_node: Option<i64>,
    pub memory_bytes_per_node: Option<i64>,
    pub price_per_gpu_hour_minor: Option<i64>,
    pub currency: Option<String>,
    pub active: Option<bool>,
}

fn check_name(name: &str) -> Result<(), InventoryError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InventoryError::invalid("name", "1 to 64 characters of [a-z0-9.-], starting alphanumeric"))
    }
}

pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), InventoryError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(InventoryError::invalid(field, format!("1 to {max} printable characters")));
    }
    Ok(())
}

fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), InventoryError> {
    if value < min || value > max {
        return Err(InventoryError::invalid(field, format!("must be between {min} and {max}")));
    }
    Ok(())
}

fn check_currency(currency: &str) -> Result<(), InventoryError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(InventoryError::invalid("currency", "an ISO 4217 code in upper case, e.g. USD"))
    }
}

const MAX_PRICE_MINOR: i64 = 100_000_000;
const MAX_MEMORY_BYTES: i64 = 1 << 50;

impl NewSku {
    fn validate(&self) -> Result<(), InventoryError> {
        check_name(&self.name)?;
        if let Some(display) = &self.display_name {
            check_text("display_name", display, 128)?;
        }
        check_text("gpu_model", &self.gpu_model, 128)?;
        check_range("gpus_per_node", self.gpus_per_node, 1, 64)?;
        check_range("gpu_memory_mib", self.gpu_memory_mib, 1, 16 << 20)?;
        check_range("vcpus_per_node", self.vcpus_per_node, 1, 4096)?;
        check_range("memory_bytes_per_node", self.memory_bytes_per_node, 1 << 20, MAX_MEMORY_BYTES)?;
        check_range("price_per_gpu_hour_minor", self.price_per_gpu_hour_minor, 0, MAX_PRICE_MINOR)?;
        check_currency(&self.currency)
    }
}

impl SkuUpdate {
    fn validate(&self) -> Result<(), InventoryError> {
        if let Some(value) = &self.display_name {
            check_text("display_name", value, 128)?;
        }
        if let Some(value) = &self.gpu_model {
            check_text("gpu_model", value, 128)?;
        }
        if let Some(value) = self.gpu_memory_mib {
            check_range("gpu_memory_mib", value, 1, 16 << 20)?;
        }
        if let Some(value) = self.vcpus_per_node {
            check_range("vcpus_per_node", value, 1, 4096)?;
        }
        if let Some(value) = self.memory_bytes_per_node {
            check_range("memory_bytes_per_node", value, 1 << 20, MAX_MEMORY_BYTES)?;
        }
        if let Some(value) = self.price_per_gpu_hour_minor {
            check_range("price_per_gpu_hour_minor", value, 0, MAX_PRICE_MINOR)?;
        }
        if let Some(value) = &self.currency {
            check_currency(value)?;
        }
        Ok(())
    }
}

fn sku_from_row(row: &Row) -> Result<Sku, InventoryError> {
    Ok(Sku {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        gpu_model: row.try_get("gpu_model")?,
        gpus_per_node: row.try_get("gpus_per_node")?,
        gpu_memory_mib: row.try_get("gpu_memory_mib")?,
        vcpus_per_node: row.try_get("vcpus_per_node")?,
        memory_bytes_per_node: row.try_get("memory_bytes_per_node")?,
        price_per_gpu_hour_minor: row.try_get("price_per_gpu_hour_minor")?,
        currency: row.try_get("currency")?,
        active: bool_flag(row.try_get("active")?),
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

/// Active SKUs, by name: what users may buy.
pub async fn list_active(store: &Store) -> Result<Vec<Sku>, InventoryError> {
    let sql = format!("SELECT {SKU_COLUMNS} FROM sku_catalog WHERE active = 1 ORDER BY name");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(store.pool()).await?;
    rows.iter().map(sku_from_row).collect()
}

/// Every SKU, active or not, by name: the operator's view.
pub async fn list_all(store: &Store) -> Result<Vec<Sku>, InventoryError> {
    let sql = format!("SELECT {SKU_COLUMNS} FROM sku_catalog ORDER BY name");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(store.pool()).await?;
    rows.iter().map(sku_from_row).collect()
}

pub async fn get(store: &Store, sku_id: &str) -> Result<Sku, InventoryError> {
    let sql = format!("SELECT {SKU_COLUMNS} FROM sku_catalog WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sku_id).fetch_optional(store.pool()).await?;
    row.as_ref().map(sku_from_row).transpose()?.ok_or(InventoryError::NotFound("sku"))
}

/// Finds a SKU by id or by name.
pub async fn resolve(connection: &mut gpuaas_store::Connection, sku: &str) -> Result<Sku, InventoryError> {
    let sql = format!("SELECT {SKU_COLUMNS} FROM sku_catalog WHERE id = $1 OR name = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sku).fetch_optional(&mut *connection).await?;
    row.as_ref().map(sku_from_row).transpose()?.ok_or_else(|| InventoryError::invalid("sku", "no such SKU"))
}

impl NodePlane {
    pub async fn create_sku(&self, actor: &Actor, new: &NewSku) -> Result<Sku, InventoryError> {
        new.validate()?;
        let now = Timestamp::now().as_micros();
        let id = new_id().to_string();
        let mut tx = self.store().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO sku_catalog (id, name, display_name, gpu_model, gpus_per_node, gpu_memory_mib, vcpus_per_node, \
             memory_bytes_per_node, price_per_gpu_hour_minor, currency, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(new.display_name.clone().unwrap_or_else(|| new.name.clone()))
        .bind(&new.gpu_model)
        .bind(new.gpus_per_node)
        .bind(new.gpu_memory_mib)
        .bind(new.vcpus_per_node)
        .bind(new.memory_bytes_per_node)
        .bind(new.price_per_gpu_hour_minor)
        .bind(&new.currency)
        .bind(now)
        .execute(&mut *tx)
        .await;
        crate::conflict_on_duplicate(inserted, || format!("a SKU named {} exists", new.name))?;
        let entry = actor.entry(
            "sku.create",
            self.resource_id(ResourceType::Sku, &id),
            serde_json::json!({"name": new.name, "price_per_gpu_hour_minor": new.price_per_gpu_hour_minor, "currency": new.currency}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        get(self.store(), &id).await
    }

    pub async fn update_sku(&self, actor: &Actor, sku_id: &str, update: &SkuUpdate) -> Result<Sku, InventoryError> {
        update.validate()?;
        let mut tx = self.store().begin().await?;
        let sql = format!("SELECT {SKU_COLUMNS} FROM sku_catalog WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sku_id).fetch_optional(&mut *tx).await?;
        let current = row.as_ref().map(sku_from_row).transpose()?.ok_or(InventoryError::NotFound("sku"))?;
        let next = Sku {
            display_name: update.display_name.clone().unwrap_or(current.display_name.clone()),
            gpu_model: update.gpu_model.clone().unwrap_or(current.gpu_model.clone()),
            gpu_memory_mib: update.gpu_memory_mib.unwrap_or(current.gpu_memory_mib),
            vcpus_per_node: update.vcpus_per_node.unwrap_or(current.vcpus_per_node),
            memory_bytes_per_node: update.memory_bytes_per_node.unwrap_or(current.memory_bytes_per_node),
            price_per_gpu_hour_minor: update.price_per_gpu_hour_minor.unwrap_or(current.price_per_gpu_hour_minor),
            currency: update.currency.clone().unwrap_or(current.currency.clone()),
            active: update.active.unwrap_or(current.active),
            updated_at: Timestamp::now(),
            ..current.clone()
        };
        sqlx::query(
            "UPDATE sku_catalog SET display_name = $2, gpu_model = $3, gpu_memory_mib = $4, vcpus_per_node = $5, \
             memory_bytes_per_node = $6, price_per_gpu_hour_minor = $7, currency = $8, active = $9, updated_at = $10 \
             WHERE id = $1",
        )
        .bind(sku_id)
        .bind(&next.display_name)
        .bind(&next.gpu_model)
        .bind(next.gpu_memory_mib)
        .bind(next.vcpus_per_node)
        .bind(next.memory_bytes_per_node)
        .bind(next.price_per_gpu_hour_minor)
        .bind(&next.currency)
        .bind(i64::from(next.active))
        .bind(next.updated_at.as_micros())
        .execute(&mut *tx)
        .await?;
        let action = match (current.active, next.active) {
            (true, false) => "sku.deactivate",
            (false, true) => "sku.activate",
            _ => "sku.update",
        };
        let entry = actor.entry(
            action,
            self.resource_id(ResourceType::Sku, sku_id),
            serde_json::json!({
                "before": {"price_per_gpu_hour_minor": current.price_per_gpu_hour_minor, "currency": current.currency, "active": current.active},
                "after": {"price_per_gpu_hour_minor": next.price_per_gpu_hour_minor, "currency": next.currency, "active": next.active},
            }),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(next)
    }
}
