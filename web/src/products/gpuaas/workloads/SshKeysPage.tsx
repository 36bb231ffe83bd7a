import { useRef, useState, type FormEvent } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { components } from "../../../shared/api/schema";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { useActionKey } from "../../../shared/data/actionKey";
import { ApiError } from "../../../shared/data/errors";
import { formatDateTime } from "../../../shared/i18n/format";
import { useAnnounce } from "../../../shared/ui/Announcer";
import { Field } from "../../../shared/ui/Field";
import { ConfirmModal } from "../../../shared/ui/Modal";
import { Page } from "../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../shared/ui/states";
import { ActionError } from "../../../shared/ui/ActionError";
import { SSH_KEYS_KEY } from "./allocation/queries";
import { MAX_KEY_NAME_CHARS, checkKeyName, checkPublicKey, looksLikePrivateKey } from "./sshKeys/validate";

type SshKey = components["schemas"]["SshKey"];
type KeyField = "name" | "public_key";

const PAGE_SIZE = 50;

function AddKeyForm({ onAdded }: { onAdded: () => void }) {
  const api = useApi();
  const announce = useAnnounce();
  const [name, setName] = useState("");
  const [publicKey, setPublicKey] = useState("");
  const [errors, setErrors] = useState<Partial<Record<KeyField, string>>>({});
  const actionKey = useActionKey();
  const nameInput = useRef<HTMLInputElement>(null);
  const keyInput = useRef<HTMLTextAreaElement>(null);

  const add = useMutation({
    mutationFn: ({ body, key }: { body: { name: string; public_key: string }; key: string }) =>
      unwrap(api.POST("/api/v1/ssh-keys", { body, headers: { "X-Idempotency-Key": key } })),
    onSuccess: (added) => {
      actionKey.reset();
      setName("");
      setPublicKey("");
      setErrors({});
      announce(`SSH key “${added.name}” added`);
      onAdded();
    },
    onError: (error) => {
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) actionKey.reset();
      if (error instanceof ApiError && error.status === 400 && (error.field === "name" || error.field === "public_key")) {
        setErrors({ [error.field]: error.message });
        (error.field === "name" ? nameInput : keyInput).current?.focus();
      }
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    add.reset();
    const found: Partial<Record<KeyField, string>> = {};
    const nameError = checkKeyName(name);
    const keyError = checkPublicKey(publicKey);
    if (nameError) found.name = nameError;
    if (keyError) found.public_key = keyError;
    setErrors(found);
    if (found.public_key && looksLikePrivateKey(publicKey)) {
      // Never keep a private key around longer than needed, and never send it.
      setPublicKey("");
      keyInput.current?.focus();
      announce("That was a private key. It was not sent and has been cleared.");
      return;
    }
    if (found.name || found.public_key) {
      (found.name ? nameInput : keyInput).current?.focus();
      return;
    }
    const body = { name: name.trim(), public_key: publicKey.trim() };
    const serialized = JSON.stringify(body);
    add.mutate({ body, key: actionKey.keyFor(serialized) });
  }

  return (
    <form className="card" onSubmit={submit} noValidate aria-labelledby="add-key-title">
      <h2 id="add-key-title">Add a key</h2>
      {add.isError ? <ActionError error={add.error} testId="add-key-error" /> : null}
      <Field label="Name" error={errors.name} hint="A name you recognise, e.g. laptop.">
        {(props) => (
          <input
            {...props}
            ref={nameInput}
            name="name"
            type="text"
            autoComplete="off"
            maxLength={MAX_KEY_NAME_CHARS}
            required
            value={name}
            onChange={(event) => {
              setErrors(({ name: _cleared, ...rest }) => rest);
              setName(event.target.value);
            }}
          />
        )}
      </Field>
      <Field
        label="Public key"
        error={errors.public_key}
        hint={
          <>
            The contents of your <code>.pub</code> file, e.g. <code>cat ~/.ssh/id_ed25519.pub</code>. It starts with{" "}
            <code>ssh-ed25519</code>, <code>ecdsa-sha2-…</code> or <code>ssh-rsa</code> (3072 bits or more). Never paste a
            private key.
          </>
        }
      >
        {(props) => (
          <textarea
            {...props}
            ref={keyInput}
            name="public_key"
            required
            spellCheck={false}
            autoComplete="off"
            value={publicKey}
            onChange={(event) => {
              setErrors(({ public_key: _cleared, ...rest }) => rest);
              setPublicKey(event.target.value);
            }}
          />
        )}
      </Field>
      <button type="submit" className="button button-primary" disabled={add.isPending} aria-busy={add.isPending}>
        {add.isPending ? "Adding…" : "Add key"}
      </button>
    </form>
  );
}

export default function SshKeysPage() {
  const api = useApi();
  const announce = useAnnounce();
  const queryClient = useQueryClient();
  const pager = useCursorPager();
  const [removing, setRemoving] = useState<SshKey | null>(null);

  const list = useQuery({
    queryKey: [...SSH_KEYS_KEY, "page", pager.cursor],
    queryFn: () =>
      unwrap(api.GET("/api/v1/ssh-keys", { params: { query: { cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } } })),
    placeholderData: keepPreviousData,
  });

  const remove = useMutation({
    mutationFn: (key: SshKey) =>
      unwrap(api.DELETE("/api/v1/ssh-keys/{key_id}", { params: { path: { key_id: key.id } } })),
    onSuccess: (_, key) => {
      setRemoving(null);
      announce(`SSH key “${key.name}” removed`);
      void queryClient.invalidateQueries({ queryKey: SSH_KEYS_KEY });
    },
    onError: (error) => {
      setRemoving(null);
      // Already gone: the list is stale.
      if (error instanceof ApiError && error.status === 404) void queryClient.invalidateQueries({ queryKey: SSH_KEYS_KEY });
    },
  });

  function added() {
    pager.reset();
    void queryClient.invalidateQueries({ queryKey: SSH_KEYS_KEY });
  }

  return (
    <Page title="SSH keys">
      <p className="muted">
        Keys you can choose when you create an allocation. Removing a key affects only future allocations; running ones
        keep it until they are released.
      </p>
      <AddKeyForm onAdded={added} />

      <section className="card" aria-labelledby="keys-title">
        <h2 id="keys-title">Your keys</h2>
        {remove.isError ? <ActionError error={remove.error} testId="remove-key-error" /> : null}
        <QueryView
          query={list}
          loadingLabel="Loading SSH keys"
          isEmpty={(data) => data.items.length === 0 && pager.page === 1}
          empty={
            <Empty title="No SSH keys yet">
              <p>Add one above: you need a key to log in to an allocation.</p>
            </Empty>
          }
        >
          {(data) => (
            <>
              <div className="table-wrap">
                <table data-testid="ssh-keys-table">
                  <caption className="visually-hidden">Your SSH keys, newest first, page {pager.page}</caption>
                  <thead>
                    <tr>
                      <th scope="col">Name</th>
                      <th scope="col">Type</th>
                      <th scope="col">Fingerprint</th>
                      <th scope="col">Added</th>
                      <th scope="col">
                        <span className="visually-hidden">Actions</span>
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {data.items.map((k) => (
                      <tr key={k.id} data-key-id={k.id}>
                        <td id={`ssh-key-${k.id}`}>{k.name}</td>
                        <td>{k.key_type}</td>
                        <td>
                          <code data-testid="ssh-key-fingerprint">{k.fingerprint}</code>
                        </td>
                        <td>{formatDateTime(k.created_at)}</td>
                        <td>
                          <button
                            type="button"
                            className="button button-small"
                            aria-describedby={`ssh-key-${k.id}`}
                            onClick={() => {
                              remove.reset();
                              setRemoving(k);
                            }}
                          >
                            Remove
                          </button>
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
              {data.items.length === 0 ? <p className="muted">No more keys.</p> : null}
              <Pager pager={pager} nextCursor={data.next_cursor} label="SSH keys" />
            </>
          )}
        </QueryView>
      </section>

      <ConfirmModal
        open={removing !== null}
        title="Remove SSH key"
        confirmLabel="Remove key"
        danger
        busy={remove.isPending}
        onConfirm={() => removing && remove.mutate(removing)}
        onClose={() => setRemoving(null)}
      >
        {removing ? (
          <>
            <p>
              Remove <strong>{removing.name}</strong> (<code>{removing.fingerprint}</code>)?
            </p>
            <p>New allocations will not get it. Allocations that already have it keep it until they are released.</p>
          </>
        ) : null}
      </ConfirmModal>
    </Page>
  );
}
