// The SKU catalog on the Fleet page, and the "Create SKU" dialog: a fresh
// installation has no SKUs, and a node cannot be registered without one.

import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { components } from "../../../../shared/api/schema";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatMoney, parseMoneyInput } from "../../../../shared/i18n/format";
import { Field } from "../../../../shared/ui/Field";
import { Modal } from "../../../../shared/ui/Modal";
import { StatusBadge } from "../../../../shared/ui/Page";
import { Empty, QueryView } from "../../../../shared/ui/states";
import { useAnnounce } from "../../../../shared/ui/Announcer";
import { formatBytes, type Sku } from "./adminUi";
import { ActionError } from "../../../../shared/ui/ActionError";
import { toApiError } from "../../../../shared/data/errors";

type NewSku = components["schemas"]["NewSku"];

export const SKUS_KEY = ["admin", "skus"] as const;

/** Every SKU (active or not); the catalog is small, so one request. */
/** A required whole number ≥ 1 (counts and sizes of the SKU form). */
function WholeNumberField({
  label,
  hint,
  max,
  value,
  error,
  onChange,
}: {
  label: string;
  hint?: string;
  max?: number;
  value: string;
  error: string | null;
  onChange: (value: string) => void;
}) {
  return (
    <Field label={label} error={error} hint={hint}>
      {(props) => (
        <input
          {...props}
          type="number"
          min={1}
          max={max}
          step={1}
          inputMode="numeric"
          value={value}
          onChange={(event) => onChange(event.target.value)}
          required
        />
      )}
    </Field>
  );
}

export function useAdminSkus() {
  const api = useApi();
  return useQuery({
    queryKey: SKUS_KEY,
    queryFn: () => unwrap(api.GET("/api/v1/admin/skus")),
    staleTime: 30_000,
  });
}

export function SkuSection() {
  const skus = useAdminSkus();
  return (
    <section className="card" aria-labelledby="skus-heading">
      <h2 id="skus-heading">SKUs</h2>
      <QueryView
        query={skus}
        loadingLabel="Loading SKUs"
        isEmpty={(data) => data.items.length === 0}
        empty={
          <Empty title="No SKUs yet">
            <p>
              A node belongs to a SKU (what you sell: GPU model, GPUs per node, price). Use “Create SKU” above before
              registering a node.
            </p>
          </Empty>
        }
      >
        {(data) => (
          <div className="table-wrap">
            <table>
              <caption className="visually-hidden">SKUs in the catalog</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Display name</th>
                  <th scope="col">GPU model</th>
                  <th scope="col" className="num">GPUs per node</th>
                  <th scope="col" className="num">GPU memory</th>
                  <th scope="col" className="num">vCPUs</th>
                  <th scope="col" className="num">Memory</th>
                  <th scope="col" className="num">Price per GPU-hour</th>
                  <th scope="col">Availability</th>
                </tr>
              </thead>
              <tbody>
                {data.items.map((sku) => (
                  <tr key={sku.id} data-testid="sku-row">
                    <td>
                      <code>{sku.name}</code>
                    </td>
                    <td>{sku.display_name}</td>
                    <td>{sku.gpu_model}</td>
                    <td className="num">{sku.gpus_per_node}</td>
                    <td className="num">{formatBytes(sku.gpu_memory_mib * 1024 * 1024)}</td>
                    <td className="num">{sku.vcpus_per_node}</td>
                    <td className="num">{formatBytes(sku.memory_bytes_per_node)}</td>
                    <td className="num">{formatMoney(sku.price_per_gpu_hour_minor, sku.currency)}</td>
                    <td>{sku.active ? <StatusBadge status="active" /> : <StatusBadge status="disabled" />}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </QueryView>
    </section>
  );
}

/** Fraction digits of a currency (2 for USD, 0 for JPY), as formatMoney counts them. */
function fractionDigits(currency: string): number {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).resolvedOptions().maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

interface SkuForm {
  name: string;
  displayName: string;
  gpuModel: string;
  gpusPerNode: string;
  gpuMemoryMib: string;
  vcpusPerNode: string;
  memoryGib: string;
  price: string;
  currency: string;
}

const EMPTY_FORM: SkuForm = {
  name: "",
  displayName: "",
  gpuModel: "",
  gpusPerNode: "8",
  gpuMemoryMib: "81920",
  vcpusPerNode: "96",
  memoryGib: "1024",
  price: "",
  currency: "USD",
};

type FormErrors = Partial<Record<keyof SkuForm, string>>;

function wholeNumber(text: string, min: number, max: number): number | null {
  if (!/^\d+$/.test(text.trim())) return null;
  const value = Number(text.trim());
  return Number.isSafeInteger(value) && value >= min && value <= max ? value : null;
}

/** The form as a NewSku body, or the fields to fix. */
function toNewSku(form: SkuForm): { body?: NewSku; errors: FormErrors } {
  const errors: FormErrors = {};
  const name = form.name.trim();
  if (!/^[a-z0-9][a-z0-9.-]{0,63}$/.test(name)) errors.name = "1 to 64 characters of a-z, 0-9, '.' and '-', starting with a letter or digit.";
  if (form.gpuModel.trim() === "") errors.gpuModel = "Give the GPU model, e.g. NVIDIA H100 80GB HBM3.";
  const gpus = wholeNumber(form.gpusPerNode, 1, 64);
  if (gpus === null) errors.gpusPerNode = "A whole number from 1 to 64.";
  const gpuMemory = wholeNumber(form.gpuMemoryMib, 1, 16 << 20);
  if (gpuMemory === null) errors.gpuMemoryMib = "A whole number of MiB, at least 1.";
  const vcpus = wholeNumber(form.vcpusPerNode, 1, 4096);
  if (vcpus === null) errors.vcpusPerNode = "A whole number from 1 to 4096.";
  const memoryGib = wholeNumber(form.memoryGib, 1, 1 << 20);
  if (memoryGib === null) errors.memoryGib = "A whole number of GiB, at least 1.";
  const currency = form.currency.trim().toUpperCase();
  if (!/^[A-Z]{3}$/.test(currency)) errors.currency = "A three-letter ISO 4217 code, e.g. USD.";
  const price = parseMoneyInput(form.price, fractionDigits(currency || "USD"));
  if (price === null) errors.price = "An amount like 2.50 (no currency sign).";
  if (Object.keys(errors).length > 0 || gpus === null || gpuMemory === null || vcpus === null || memoryGib === null || price === null) {
    return { errors };
  }
  return {
    errors,
    body: {
      name,
      display_name: form.displayName.trim() === "" ? null : form.displayName.trim(),
      gpu_model: form.gpuModel.trim(),
      gpus_per_node: gpus,
      gpu_memory_mib: gpuMemory,
      vcpus_per_node: vcpus,
      memory_bytes_per_node: memoryGib * 1024 * 1024 * 1024,
      price_per_gpu_hour_minor: price,
      currency,
    },
  };
}

/** Server field names → form fields, so a 400 lands on the right input. */
const SERVER_FIELDS: Record<string, keyof SkuForm> = {
  name: "name",
  display_name: "displayName",
  gpu_model: "gpuModel",
  gpus_per_node: "gpusPerNode",
  gpu_memory_mib: "gpuMemoryMib",
  vcpus_per_node: "vcpusPerNode",
  memory_bytes_per_node: "memoryGib",
  price_per_gpu_hour_minor: "price",
  currency: "currency",
};

export function CreateSkuModal({ open, onClose }: { open: boolean; onClose: () => void }) {
  const api = useApi();
  const queryClient = useQueryClient();
  const announce = useAnnounce();
  const [form, setForm] = useState<SkuForm>(EMPTY_FORM);
  const [errors, setErrors] = useState<FormErrors>({});
  const create = useMutation({
    mutationFn: (body: NewSku) => unwrap(api.POST("/api/v1/admin/skus", { body })),
    onSuccess: (sku: Sku) => {
      void queryClient.invalidateQueries({ queryKey: SKUS_KEY });
      announce(`SKU ${sku.name} created`);
      setForm(EMPTY_FORM);
      setErrors({});
      create.reset();
      onClose();
    },
  });

  function close() {
    create.reset();
    setErrors({});
    onClose();
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    const { body, errors: found } = toNewSku(form);
    setErrors(found);
    if (body === undefined) return;
    create.mutate(body);
  }

  const serverError = create.error ? toApiError(create.error) : null;
  const serverField =
    serverError === null
      ? null
      : serverError.status === 409
        ? "name"
        : serverError.field !== null
          ? (SERVER_FIELDS[serverError.field] ?? null)
          : null;
  const errorFor = (key: keyof SkuForm): string | null =>
    errors[key] ??
    (serverField === key && serverError !== null
      ? serverError.status === 409
        ? "A SKU with this name already exists."
        : serverError.message
      : null);
  const set = (key: keyof SkuForm) => (value: string) => setForm((current) => ({ ...current, [key]: value }));
  const hasClientErrors = Object.keys(errors).length > 0;

  return (
    <Modal open={open} title="Create SKU" onClose={close}>
      <form onSubmit={submit} noValidate aria-describedby={hasClientErrors ? "sku-form-summary" : undefined}>
        {hasClientErrors ? (
          <p className="form-error" role="alert" id="sku-form-summary">
            Some fields need attention; see the messages below them.
          </p>
        ) : null}
        <Field label="Name" error={errorFor("name")} hint="Stable machine name, e.g. h100-80gb-x8 (a-z, 0-9, '.' and '-').">
          {(props) => (
            <input {...props} value={form.name} onChange={(e) => set("name")(e.target.value)} autoComplete="off" required />
          )}
        </Field>
        <Field label="Display name" error={errorFor("displayName")} hint="Optional; what users see, e.g. 8× H100 80GB.">
          {(props) => <input {...props} value={form.displayName} onChange={(e) => set("displayName")(e.target.value)} />}
        </Field>
        <Field label="GPU model" error={errorFor("gpuModel")} hint="e.g. NVIDIA H100 80GB HBM3">
          {(props) => <input {...props} value={form.gpuModel} onChange={(e) => set("gpuModel")(e.target.value)} required />}
        </Field>
        <WholeNumberField label="GPUs per node" max={64} value={form.gpusPerNode} error={errorFor("gpusPerNode")} onChange={set("gpusPerNode")} />
        <WholeNumberField label="GPU memory (MiB)" hint="Per GPU; 81920 for an 80 GB card." value={form.gpuMemoryMib} error={errorFor("gpuMemoryMib")} onChange={set("gpuMemoryMib")} />
        <WholeNumberField label="vCPUs per node" max={4096} value={form.vcpusPerNode} error={errorFor("vcpusPerNode")} onChange={set("vcpusPerNode")} />
        <WholeNumberField label="Memory per node (GiB)" value={form.memoryGib} error={errorFor("memoryGib")} onChange={set("memoryGib")} />
        <Field
          label="Price per GPU-hour"
          error={errorFor("price")}
          hint={`Price of one GPU for one hour, in ${form.currency.trim().toUpperCase() || "the currency below"}, e.g. 2.50.`}
        >
          {(props) => (
            <input
              {...props}
              inputMode="decimal"
              autoComplete="off"
              value={form.price}
              onChange={(e) => set("price")(e.target.value)}
              required
            />
          )}
        </Field>
        <Field label="Currency" error={errorFor("currency")} hint="ISO 4217 code, e.g. USD.">
          {(props) => (
            <input
              {...props}
              maxLength={3}
              autoComplete="off"
              value={form.currency}
              onChange={(e) => set("currency")(e.target.value.toUpperCase())}
              required
            />
          )}
        </Field>
        <ActionError error={serverError} what="The SKU was not created" shownAtField={serverField !== null} />
        <div className="modal-actions">
          <button type="button" className="button" onClick={close}>
            Cancel
          </button>
          <button type="submit" className="button button-primary" disabled={create.isPending} aria-busy={create.isPending}>
            {create.isPending ? "Creating…" : "Create"}
          </button>
        </div>
      </form>
    </Modal>
  );
}
