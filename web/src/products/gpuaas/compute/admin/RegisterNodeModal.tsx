// "Register node": hostname and SKU in, the node and its one-time enrollment command
// out. The command is shown in the same dialog until the operator closes it.

import { useEffect, useRef, useState, type FormEvent } from "react";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { Link } from "react-router";
import type { components } from "../../../../shared/api/schema";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatMoney } from "../../../../shared/i18n/format";
import { useAnnounce } from "../../../../shared/ui/Announcer";
import { Field } from "../../../../shared/ui/Field";
import { Modal } from "../../../../shared/ui/Modal";
import { Loading } from "../../../../shared/ui/states";
import { EnrollmentCommand } from "./adminUi";
import { useAdminSkus } from "./SkuSection";
import { ActionError } from "../../../../shared/ui/ActionError";
import { toApiError } from "../../../../shared/data/errors";

type NewNode = components["schemas"]["NewNode"];
type RegisteredNode = components["schemas"]["RegisteredNode"];

export const NODES_KEY = ["admin", "nodes"] as const;

export function RegisterNodeModal({ open, onClose }: { open: boolean; onClose: () => void }) {
  const api = useApi();
  const queryClient = useQueryClient();
  const announce = useAnnounce();
  const skus = useAdminSkus();
  const [hostname, setHostname] = useState("");
  const [sku, setSku] = useState("");
  const [mode, setMode] = useState<"manual" | "maas">("manual");
  const [hostnameError, setHostnameError] = useState<string | null>(null);
  const [skuError, setSkuError] = useState<string | null>(null);
  const [registered, setRegistered] = useState<RegisteredNode | null>(null);
  const resultRef = useRef<HTMLDivElement>(null);

  // The submit button goes away with the form: keep focus inside the dialog.
  useEffect(() => {
    if (registered !== null) resultRef.current?.focus();
  }, [registered]);

  const activeSkus = (skus.data?.items ?? []).filter((item) => item.active);
  const onlySku = activeSkus.length === 1 ? activeSkus[0] : undefined;

  // One active SKU: choose it for the operator.
  useEffect(() => {
    if (open && sku === "" && onlySku !== undefined) setSku(onlySku.name);
  }, [open, sku, onlySku]);

  const register = useMutation({
    mutationFn: (body: NewNode) => unwrap(api.POST("/api/v1/admin/nodes", { body })),
    onSuccess: (result) => {
      setRegistered(result);
      void queryClient.invalidateQueries({ queryKey: NODES_KEY });
      announce(`Node ${result.node.hostname} registered. Copy its enrollment command now; it is shown once.`);
    },
  });

  function close() {
    setRegistered(null);
    setHostname("");
    setSku("");
    setMode("manual");
    setHostnameError(null);
    setSkuError(null);
    register.reset();
    onClose();
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    const name = hostname.trim();
    const badHost = name === "" ? "Give the host's name, e.g. gpu-01." : /\s/.test(name) ? "A host name has no spaces." : null;
    const badSku = sku === "" ? "Choose the SKU this node sells." : null;
    setHostnameError(badHost);
    setSkuError(badSku);
    if (badHost !== null || badSku !== null) return;
    register.mutate({ hostname: name, sku, onboarding_mode: mode });
  }

  const serverError = register.error ? toApiError(register.error) : null;
  const serverHostError =
    serverError === null
      ? null
      : serverError.status === 409
        ? "A node with this hostname is already registered."
        : serverError.field === "hostname"
          ? serverError.message
          : null;
  const serverSkuError = serverError?.field === "sku" ? serverError.message : null;
  const serverModeError = serverError?.field === "onboarding_mode" ? serverError.message : null;
  const chosen = activeSkus.find((item) => item.name === sku);

  return (
    <Modal open={open} title={registered ? "Node registered" : "Register node"} onClose={close}>
      {registered ? (
        <>
          <div
            className="modal-body"
            ref={resultRef}
            tabIndex={-1}
            data-testid="registered-node"
            data-node-id={registered.node.id}
          >
            <p role="status">
              <strong>{registered.node.hostname}</strong> is registered and waits for its agent to enroll.
            </p>
            <EnrollmentCommand ticket={registered.enrollment} hostname={registered.node.hostname} />
            <p>
              <Link to={`/admin/fleet/${encodeURIComponent(registered.node.id)}`} onClick={close}>
                Open {registered.node.hostname}
              </Link>
            </p>
          </div>
          <div className="modal-actions">
            <button type="button" className="button button-primary" onClick={close}>
              Done
            </button>
          </div>
        </>
      ) : (
        <form onSubmit={submit} noValidate>
          <Field label="Hostname" error={hostnameError ?? serverHostError} hint="The host's DNS name, e.g. gpu-01.">
            {(props) => (
              <input
                {...props}
                value={hostname}
                onChange={(e) => setHostname(e.target.value)}
                autoComplete="off"
                spellCheck={false}
                required
              />
            )}
          </Field>
          {skus.isPending ? (
            <Loading label="Loading SKUs" />
          ) : (
            <Field
              label="SKU"
              error={skuError ?? serverSkuError}
              hint={
                chosen
                  ? `${chosen.name}: ${chosen.gpus_per_node} × ${chosen.gpu_model}, ${formatMoney(chosen.price_per_gpu_hour_minor, chosen.currency)} per GPU-hour`
                  : activeSkus.length === 0
                    ? "There is no active SKU yet: create one first (Create SKU)."
                    : "What this node sells."
              }
            >
              {(props) => (
                <select {...props} value={sku} onChange={(e) => setSku(e.target.value)} required>
                  <option value="">Choose a SKU</option>
                  {activeSkus.map((item) => (
                    <option key={item.id} value={item.name}>
                      {item.display_name && item.display_name !== item.name ? `${item.display_name} (${item.name})` : item.name}
                    </option>
                  ))}
                </select>
              )}
            </Field>
          )}
          {skus.error ? <ActionError error={skus.error} what="The SKUs could not be loaded" /> : null}
          <Field
            label="Onboarding mode"
            error={serverModeError}
            hint="Manual: you run the enrollment command on the host. MAAS: the host enrolls when it is deployed."
          >
            {(props) => (
              <select {...props} value={mode} onChange={(e) => setMode(e.target.value === "maas" ? "maas" : "manual")}>
                <option value="manual">Manual</option>
                <option value="maas">MAAS</option>
              </select>
            )}
          </Field>
          <ActionError
            error={serverError}
            what="The node was not registered"
            shownAtField={serverHostError !== null || serverSkuError !== null || serverModeError !== null}
          />
          <div className="modal-actions">
            <button type="button" className="button" onClick={close}>
              Cancel
            </button>
            <button type="submit" className="button button-primary" disabled={register.isPending} aria-busy={register.isPending}>
              {register.isPending ? "Registering…" : "Register"}
            </button>
          </div>
        </form>
      )}
    </Modal>
  );
}
