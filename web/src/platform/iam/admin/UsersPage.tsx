// Operators: every user (filters by email prefix and status), and a new local account.

import { useEffect, useId, useState, type FormEvent } from "react";
import { Link } from "react-router";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { components } from "../../../shared/api/schema";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { formatDateTime } from "../../../shared/i18n/format";
import { useAnnounce } from "../../../shared/ui/Announcer";
import { Field, SelectField } from "../../../shared/ui/Field";
import { Modal } from "../../../shared/ui/Modal";
import { Page, StatusBadge } from "../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../shared/ui/states";
import { roleLabel, signInLabel } from "./users";
import { ActionError } from "../../../shared/ui/ActionError";
import { toApiError } from "../../../shared/data/errors";

const USER_STATUSES = [
  { value: "", label: "All" },
  { value: "active", label: "Active" },
  { value: "disabled", label: "Disabled" },
];
import { useActionKey } from "../../../shared/data/actionKey";

type User = components["schemas"]["User"];

const MIN_PASSWORD = 12;

type CreateFields = "email" | "display_name" | "role" | "password";

function CreateUserModal({ open, onClose, onCreated }: { open: boolean; onClose: () => void; onCreated: (user: User) => void }) {
  const api = useApi();
  const keys = useActionKey();
  const formId = useId();
  const [email, setEmail] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [role, setRole] = useState("user");
  const [password, setPassword] = useState("");
  const [errors, setErrors] = useState<Partial<Record<CreateFields, string>>>({});

  const create = useMutation({
    mutationFn: (body: { email: string; display_name: string | null; role: string; password: string }) =>
      unwrap(
        api.POST("/api/v1/admin/users", {
          body,
          headers: { "X-Idempotency-Key": keys.keyFor(JSON.stringify(body)) },
        }),
      ),
    onSuccess: (user) => {
      keys.reset();
      setEmail("");
      setDisplayName("");
      setRole("user");
      setPassword("");
      setErrors({});
      onCreated(user);
    },
    onError: (caught) => {
      const error = toApiError(caught);
      if (error.status === 409) {
        setErrors({ email: "An account with this email already exists." });
        return;
      }
      const field = error.field;
      if (field === "email" || field === "display_name" || field === "role" || field === "password") {
        setErrors({ [field]: error.message });
      }
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    create.reset();
    const next: Partial<Record<CreateFields, string>> = {};
    const trimmed = email.trim();
    if (!/^[^\s@]+@[^\s@]+$/.test(trimmed)) next.email = "Enter an email address such as ada@example.com.";
    if (password.length < MIN_PASSWORD) next.password = `Use at least ${MIN_PASSWORD} characters.`;
    setErrors(next);
    if (Object.keys(next).length > 0) return;
    create.mutate({ email: trimmed, display_name: displayName.trim() || null, role, password });
  }

  const error = create.error ? toApiError(create.error) : null;
  const fieldError = Object.keys(errors).length > 0;

  return (
    <Modal open={open} title="Create user" onClose={onClose}>
      <form id={formId} onSubmit={submit} noValidate>
        <Field label="Email" error={errors.email}>
          {(props) => (
            <input
              {...props}
              type="email"
              name="email"
              autoComplete="off"
              required
              value={email}
              onChange={(event) => setEmail(event.target.value)}
            />
          )}
        </Field>
        <Field label="Display name" error={errors.display_name} hint="Optional; shown instead of the email.">
          {(props) => (
            <input {...props} name="display_name" autoComplete="off" value={displayName} onChange={(event) => setDisplayName(event.target.value)} />
          )}
        </Field>
        <Field label="Role" error={errors.role}>
          {(props) => (
            <select {...props} name="role" value={role} onChange={(event) => setRole(event.target.value)}>
              <option value="user">User</option>
              <option value="admin">Admin</option>
              <option value="billing_operator">Billing operator</option>
            </select>
          )}
        </Field>
        <Field label="Password" error={errors.password} hint={`At least ${MIN_PASSWORD} characters. Share it with the person securely.`}>
          {(props) => (
            <input
              {...props}
              type="password"
              name="password"
              autoComplete="new-password"
              required
              value={password}
              onChange={(event) => setPassword(event.target.value)}
            />
          )}
        </Field>
        <ActionError error={error} shownAtField={Boolean(fieldError)} />
      </form>
      <div className="modal-actions">
        <button type="button" className="button" onClick={onClose}>
          Cancel
        </button>
        <button type="submit" form={formId} className="button button-primary" disabled={create.isPending} aria-busy={create.isPending}>
          {create.isPending ? "Creating…" : "Create user"}
        </button>
      </div>
    </Modal>
  );
}

/** The email filter waits until typing pauses, so each key press is not a request. */
function useDebounced<T>(value: T, ms = 300): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setDebounced(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

/** One filter's pages; a new filter mounts a new table, back on page 1. */
function UserTable({ email, status }: { email: string; status: "" | "active" | "disabled" }) {
  const api = useApi();
  const pager = useCursorPager();
  const query = useQuery({
    queryKey: ["admin", "users", email, status, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/users", {
          params: {
            query: { limit: 50, cursor: pager.cursor ?? undefined, email: email || undefined, status: status || undefined },
          },
        }),
      ),
    placeholderData: keepPreviousData,
  });

  return (
    <QueryView
      query={query}
      loadingLabel="Loading users"
      isEmpty={(page) => page.items.length === 0}
      empty={<Empty title={email || status ? "No users match these filters" : "No users yet"} />}
    >
      {(page) => (
        <>
          <div className="table-wrap" aria-busy={query.isFetching}>
            <table data-testid="users-table">
              <caption className="visually-hidden">Users, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Email</th>
                  <th scope="col">Name</th>
                  <th scope="col">Role</th>
                  <th scope="col">Status</th>
                  <th scope="col">Sign-in</th>
                  <th scope="col">Created</th>
                </tr>
              </thead>
              <tbody>
                {page.items.map((user) => (
                  <tr key={user.id} data-user-id={user.id}>
                    <td>
                      <Link to={`/admin/users/${user.id}`}>{user.email}</Link>
                    </td>
                    <td>{user.display_name || <span className="muted">—</span>}</td>
                    <td>{roleLabel(user.role)}</td>
                    <td>
                      <StatusBadge status={user.status} />
                    </td>
                    <td>{signInLabel(user.identity_source)}</td>
                    <td>{formatDateTime(user.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager pager={pager} nextCursor={page.next_cursor} label="Users" />
        </>
      )}
    </QueryView>
  );
}

export default function UsersPage() {
  const announce = useAnnounce();
  const queryClient = useQueryClient();
  const [emailInput, setEmailInput] = useState("");
  const [status, setStatus] = useState<"" | "active" | "disabled">("");
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<User | null>(null);
  const email = useDebounced(emailInput.trim());

  return (
    <Page
      title="Users"
      actions={
        <button type="button" className="button button-primary" onClick={() => setCreating(true)}>
          Create user
        </button>
      }
    >
      {created ? (
        <p className="notice" role="status" data-testid="user-created">
          Created {created.email}. <Link to={`/admin/users/${created.id}`}>Open {created.email}</Link>
        </p>
      ) : null}
      <form className="toolbar" role="search" aria-label="Filter users" onSubmit={(event) => event.preventDefault()}>
        <Field label="Email starts with">
          {(props) => (
            <input {...props} type="search" name="email" autoComplete="off" value={emailInput} onChange={(event) => setEmailInput(event.target.value)} />
          )}
        </Field>
        <SelectField
          label="Status"
          value={status}
          options={USER_STATUSES}
          onChange={(value) => setStatus(value as "" | "active" | "disabled")}
        />
      </form>
      <UserTable key={`${email}|${status}`} email={email} status={status} />
      <CreateUserModal
        open={creating}
        onClose={() => setCreating(false)}
        onCreated={(user) => {
          setCreating(false);
          setCreated(user);
          announce(`User ${user.email} created`);
          void queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
        }}
      />
    </Page>
  );
}
