import { useEffect, useId, useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate, useSearchParams } from "react-router";
import { useMe } from "../../../shared/auth/session";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { useActionKey } from "../../../shared/data/actionKey";
import { ApiError } from "../../../shared/data/errors";
import { formatMoney } from "../../../shared/i18n/format";
import { useAnnounce } from "../../../shared/ui/Announcer";
import { Field } from "../../../shared/ui/Field";
import { Modal } from "../../../shared/ui/Modal";
import { Page } from "../../../shared/ui/Page";
import { Empty, ErrorPanel, Loading } from "../../../shared/ui/states";
import { capacityBySku, capacityOf, formatMib, useNodeSummaries, useSkus, type Sku } from "../compute/catalog";
import { ActionError } from "../../../shared/ui/ActionError";
import { CostSummary } from "./allocation/CostSummary";
import { ALLOCATIONS_KEY, BALANCE_KEY, SSH_KEYS_KEY, useBalance } from "./allocation/queries";

type FieldName = "sku" | "gpu_count" | "project_id" | "ssh_key_ids" | "name";
type FieldErrors = Partial<Record<FieldName, string>>;

const MAX_NAME_CHARS = 64;

interface Draft {
  sku: string;
  gpu_count: number;
  project_id: string;
  ssh_key_ids: string[];
  name: string | null;
}

/** Where to go next after a refused create, by status. */
function NextStep({ error }: { error: unknown }) {
  if (!(error instanceof ApiError)) return null;
  switch (error.status) {
    case 402:
      return (
        <>
          <Link to="/billing">Top up in Billing</Link>, then create the allocation again.
        </>
      );
    case 409:
      return (
        <>
          See what is free now on the <Link to="/capacity">Capacity</Link> page.
        </>
      );
    case 429:
      return error.code === "allocation_limit_reached" ? (
        <>
          Release one of your <Link to="/allocations">allocations</Link> you no longer need.
        </>
      ) : null;
    default:
      return null;
  }
}

function validate(
  sku: Sku | undefined,
  gpuCountText: string,
  projectId: string,
  keyIds: string[],
  name: string,
): FieldErrors {
  const errors: FieldErrors = {};
  if (!sku) errors.sku = "Choose a GPU type.";
  const count = Number(gpuCountText);
  const max = sku?.gpus_per_node ?? 1;
  if (gpuCountText.trim() === "" || !Number.isInteger(count) || count < 1 || count > max) {
    errors.gpu_count = `Enter a whole number from 1 to ${max}.`;
  }
  if (projectId === "") errors.project_id = "Choose a project.";
  if (keyIds.length === 0) errors.ssh_key_ids = "Choose at least one SSH key: you need it to log in.";
  if ([...name.trim()].length > MAX_NAME_CHARS) errors.name = `Use at most ${MAX_NAME_CHARS} characters.`;
  return errors;
}

export default function CreateAllocationPage() {
  const api = useApi();
  const me = useMe();
  const navigate = useNavigate();
  const announce = useAnnounce();
  const queryClient = useQueryClient();
  const [params] = useSearchParams();
  const requestedSku = params.get("sku");

  const skus = useSkus();
  const nodes = useNodeSummaries(15_000);
  const balance = useBalance(30_000);
  const keys = useQuery({
    queryKey: [...SSH_KEYS_KEY, "all"],
    // A user has at most 50 keys: one page holds them all.
    queryFn: () => unwrap(api.GET("/api/v1/ssh-keys", { params: { query: { limit: 50 } } })),
  });

  const [skuName, setSkuName] = useState(requestedSku ?? "");
  const [gpuCount, setGpuCount] = useState("1");
  const [projectId, setProjectId] = useState(me.projects[0]?.id ?? "");
  const [keyIds, setKeyIds] = useState<string[]>([]);
  const [name, setName] = useState("");
  const [errors, setErrors] = useState<FieldErrors>({});
  const [confirming, setConfirming] = useState<Draft | null>(null);
  const [unknownSku, setUnknownSku] = useState<string | null>(null);
  // One key per create action: the same draft confirmed again (a retry) reuses it,
  // a changed draft is a new action and gets a new key.
  const actionKey = useActionKey();
  const keysFieldId = useId();

  const skuList = skus.data?.items ?? [];
  const sku = skuList.find((s) => s.name === skuName || s.id === skuName);

  // Preselect `?sku=` once the SKUs are known; otherwise the first one.
  useEffect(() => {
    if (skuList.length === 0 || sku) return;
    if (skuName !== "") setUnknownSku(skuName);
    setSkuName(skuList[0]?.name ?? "");
  }, [skuList, sku, skuName]);

  // Preselect the only key when there is just one.
  const keyItems = keys.data?.items;
  useEffect(() => {
    if (keyItems?.length === 1 && keyItems[0]) setKeyIds((current) => (current.length === 0 ? [keyItems[0]!.id] : current));
  }, [keyItems]);

  const create = useMutation({
    mutationFn: ({ draft, key }: { draft: Draft; key: string }) =>
      unwrap(api.POST("/api/v1/allocations", { body: draft, headers: { "X-Idempotency-Key": key } })),
    onSuccess: (allocation) => {
      actionKey.reset();
      setConfirming(null);
      void queryClient.invalidateQueries({ queryKey: ALLOCATIONS_KEY });
      void queryClient.invalidateQueries({ queryKey: BALANCE_KEY });
      announce(`Allocation created. Provisioning has started.`);
      navigate(`/allocations/${encodeURIComponent(allocation.id)}`);
    },
    onError: (error) => {
      setConfirming(null);
      if (error instanceof ApiError && error.status === 400 && error.field) {
        const field = error.field as FieldName;
        setErrors({ [field]: error.message });
      }
      // A definite refusal ends this action; a network failure may be retried with the same key.
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) actionKey.reset();
    },
  });

  const capacity = capacityOf(capacityBySku(nodes.data?.items ?? []), sku?.name ?? "");
  const count = Number(gpuCount);
  const countValid = Number.isInteger(count) && count >= 1 && count <= (sku?.gpus_per_node ?? 0);

  function submit(event: FormEvent) {
    event.preventDefault();
    create.reset();
    const found = validate(sku, gpuCount, projectId, keyIds, name);
    setErrors(found);
    if (Object.keys(found).length > 0 || !sku) {
      announce("Check the form: some fields need attention.");
      return;
    }
    setConfirming({
      sku: sku.name,
      gpu_count: count,
      project_id: projectId,
      ssh_key_ids: keyIds,
      name: name.trim() === "" ? null : name.trim(),
    });
  }

  function confirm() {
    if (confirming === null) return;
    const body = JSON.stringify(confirming);
    create.mutate({ draft: confirming, key: actionKey.keyFor(body) });
  }

  /** Editing a field clears what was said about it. */
  function edited(field: FieldName) {
    setErrors((current) => {
      if (current[field] === undefined) return current;
      const { [field]: _removed, ...rest } = current;
      return rest;
    });
  }

  function fieldError(field: FieldName): string | null {
    return errors[field] ?? null;
  }

  if (skus.isPending) {
    return (
      <Page title="New allocation">
        <Loading label="Loading GPU types" />
      </Page>
    );
  }
  if (skus.data === undefined) {
    return (
      <Page title="New allocation">
        <ErrorPanel error={skus.error} onRetry={() => void skus.refetch()} />
      </Page>
    );
  }
  if (skuList.length === 0) {
    return (
      <Page title="New allocation">
        <Empty title="No GPU types are on offer right now">
          <p>Check again later, or ask an operator.</p>
        </Empty>
      </Page>
    );
  }

  const balanceMinor = balance.data?.amount_minor;
  const noProjects = me.projects.length === 0;

  return (
    <Page title="New allocation">
      {unknownSku ? (
        <p className="warning" role="status">
          The GPU type “{unknownSku}” is not on offer; choose another below.
        </p>
      ) : null}
      {balanceMinor !== undefined && balanceMinor <= 0 ? (
        <div className="warning" data-testid="balance-warning">
          <p>
            Your balance is {formatMoney(balanceMinor, balance.data?.currency ?? sku?.currency ?? "USD")}: new
            allocations are refused until you add credit. <Link to="/billing">Top up in Billing</Link>.
          </p>
        </div>
      ) : null}

      <form className="card" onSubmit={submit} noValidate aria-labelledby="create-form-title">
        <h2 id="create-form-title">What you need</h2>
        {create.isError ? <ActionError error={create.error} next={<NextStep error={create.error} />} testId="create-error" /> : null}

        <Field
          label="GPU type"
          error={fieldError("sku")}
          hint={
            sku ? (
              <>
                {sku.gpu_model}, {formatMib(sku.gpu_memory_mib)} per GPU, up to {sku.gpus_per_node} GPUs per node.{" "}
                {nodes.data ? (
                  <span data-testid="sku-free">
                    {capacity.largestFreeOnOneNode} GPU{capacity.largestFreeOnOneNode === 1 ? "" : "s"} free on one node
                    right now.
                  </span>
                ) : null}
              </>
            ) : undefined
          }
        >
          {(props) => (
            <select {...props} name="sku" value={sku?.name ?? ""} onChange={(event) => {
                edited("sku");
                edited("gpu_count");
                setSkuName(event.target.value);
              }}>
              {skuList.map((s) => (
                <option key={s.id} value={s.name}>
                  {s.display_name} — {formatMoney(s.price_per_gpu_hour_minor, s.currency)} per GPU-hour
                </option>
              ))}
            </select>
          )}
        </Field>

        <Field label="GPU count" error={fieldError("gpu_count")} hint={sku ? `1 to ${sku.gpus_per_node}` : undefined}>
          {(props) => (
            <input
              {...props}
              name="gpu_count"
              type="number"
              inputMode="numeric"
              min={1}
              max={sku?.gpus_per_node ?? 1}
              step={1}
              required
              value={gpuCount}
              onChange={(event) => {
                edited("gpu_count");
                setGpuCount(event.target.value);
              }}
            />
          )}
        </Field>

        <Field
          label="Project"
          error={fieldError("project_id")}
          hint={noProjects ? "You are not in any project; ask an operator to add you to one." : undefined}
        >
          {(props) => (
            <select {...props} name="project_id" value={projectId} onChange={(event) => {
                edited("project_id");
                setProjectId(event.target.value);
              }}>
              {noProjects ? <option value="">No project</option> : null}
              {me.projects.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name} ({p.role})
                </option>
              ))}
            </select>
          )}
        </Field>

        <fieldset
          className={fieldError("ssh_key_ids") ? "field-invalid" : undefined}
          aria-describedby={fieldError("ssh_key_ids") ? `${keysFieldId}-error` : undefined}
          data-testid="ssh-key-choices"
        >
          <legend>SSH keys</legend>
          {keys.isPending ? (
            <Loading label="Loading your SSH keys" />
          ) : keys.data === undefined ? (
            <ErrorPanel error={keys.error} onRetry={() => void keys.refetch()} />
          ) : keys.data.items.length === 0 ? (
            <p>
              You have no SSH keys yet. <Link to="/ssh-keys">Add an SSH key</Link> first: you need one to log in.
            </p>
          ) : (
            <>
              {keys.data.items.map((k) => (
                <label key={k.id} className="checkbox">
                  <input
                    type="checkbox"
                    name="ssh_key_ids"
                    value={k.id}
                    checked={keyIds.includes(k.id)}
                    onChange={(event) => {
                      edited("ssh_key_ids");
                      setKeyIds((current) =>
                        event.target.checked ? [...current, k.id] : current.filter((id) => id !== k.id),
                      );
                    }}
                  />
                  <span>
                    {k.name} <span className="muted">({k.key_type}, {k.fingerprint})</span>
                  </span>
                </label>
              ))}
              <p className="field-hint">
                <Link to="/ssh-keys">Manage SSH keys</Link>
              </p>
            </>
          )}
          {fieldError("ssh_key_ids") ? (
            <p className="field-error" id={`${keysFieldId}-error`}>
              {fieldError("ssh_key_ids")}
            </p>
          ) : null}
        </fieldset>

        <Field label="Name (optional)" error={fieldError("name")} hint="Helps you find it later, e.g. training-run-3.">
          {(props) => (
            <input {...props} name="name" type="text" maxLength={MAX_NAME_CHARS} value={name} onChange={(event) => {
                edited("name");
                setName(event.target.value);
              }} />
          )}
        </Field>

        <section aria-labelledby="cost-title" className="notice" data-testid="cost-summary">
          <h3 id="cost-title">Cost</h3>
          {sku && countValid ? (
            <CostSummary
              pricePerGpuHourMinor={sku.price_per_gpu_hour_minor}
              gpuCount={count}
              currency={sku.currency}
              balanceMinor={balanceMinor}
              balanceCurrency={balance.data?.currency}
              testIdPrefix="form"
            />
          ) : (
            <p className="muted">Choose a GPU type and a GPU count to see the cost.</p>
          )}
          <p className="muted">Billing starts when the allocation becomes active and stops when you release it.</p>
        </section>

        <button type="submit" className="button button-primary" disabled={create.isPending}>
          Create allocation
        </button>
      </form>

      <Modal open={confirming !== null} title="Confirm allocation" onClose={() => (create.isPending ? undefined : setConfirming(null))}>
        {confirming !== null && sku ? (
          <>
            <div className="modal-body">
              <p>
                {confirming.gpu_count} × {sku.display_name}
                {confirming.name ? <> named “{confirming.name}”</> : null} in project{" "}
                {me.projects.find((p) => p.id === confirming.project_id)?.name ?? confirming.project_id}.
              </p>
              <CostSummary
                pricePerGpuHourMinor={sku.price_per_gpu_hour_minor}
                gpuCount={confirming.gpu_count}
                currency={sku.currency}
                balanceMinor={balanceMinor}
                balanceCurrency={balance.data?.currency}
                testIdPrefix="confirm"
              />
            </div>
            <div className="modal-actions">
              <button type="button" className="button" onClick={() => setConfirming(null)} disabled={create.isPending}>
                Cancel
              </button>
              <button
                type="button"
                className="button button-primary"
                onClick={confirm}
                disabled={create.isPending}
                aria-busy={create.isPending}
              >
                {create.isPending ? "Creating…" : "Confirm and create"}
              </button>
            </div>
          </>
        ) : null}
      </Modal>
    </Page>
  );
}
