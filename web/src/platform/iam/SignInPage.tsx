import { useEffect, useRef, useState, type FormEvent } from "react";
import { useQuery } from "@tanstack/react-query";
import { useSession } from "../../shared/auth/session";
import { useApi } from "../../shared/data/ApiContext";
import { ApiError, describeError } from "../../shared/data/errors";
import { Field } from "../../shared/ui/Field";

/** Which sign-in methods this installation offers (password, and SSO when configured). */
function useProviders() {
  const api = useApi();
  return useQuery({
    queryKey: ["auth-providers"],
    queryFn: async () => {
      const { data } = await api.GET("/api/v1/auth/providers");
      return data ?? { password: true, oidc: false };
    },
    staleTime: Infinity,
  });
}

export function SignInPage({ reason }: { reason?: string }) {
  const { signIn } = useSession();
  const providers = useProviders();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const heading = useRef<HTMLHeadingElement>(null);

  useEffect(() => {
    document.title = "Sign in · gpuaas";
    heading.current?.focus();
  }, []);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(email.trim(), password);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught : new ApiError({ status: -1, code: "client_error", message: String(caught) }));
      setBusy(false);
    }
  }

  const message =
    error === null
      ? null
      : error.code === "invalid_credentials"
        ? "That email and password do not match an account."
        : error.code === "account_locked" || error.status === 429
          ? `Too many attempts. ${describeError(error).advice}`
          : error.code === "account_disabled"
            ? "This account is disabled. Ask an operator to enable it."
            : `${describeError(error).title}: ${error.message}`;

  return (
    <main id="main" className="signin">
      <div className="signin-card">
        <p className="brand-large" aria-hidden="true">
          gpuaas
        </p>
        <h1 ref={heading} tabIndex={-1}>
          Sign in
        </h1>
        {reason ? (
          <p className="notice" role="status">
            {reason}
          </p>
        ) : null}
        {providers.data?.password === false ? (
          <p className="notice">Password sign-in is disabled on this installation.</p>
        ) : (
          <form onSubmit={(event) => void submit(event)} noValidate>
            <Field label="Email">
              {(props) => (
                <input
                  {...props}
                  type="email"
                  name="email"
                  autoComplete="username"
                  required
                  value={email}
                  onChange={(event) => setEmail(event.target.value)}
                />
              )}
            </Field>
            <Field label="Password">
              {(props) => (
                <input
                  {...props}
                  type="password"
                  name="password"
                  autoComplete="current-password"
                  required
                  value={password}
                  onChange={(event) => setPassword(event.target.value)}
                />
              )}
            </Field>
            {message ? (
              <div className="form-error" role="alert">
                <p>{message}</p>
                {error?.correlationId ? (
                  <p className="correlation">
                    Correlation id: <code>{error.correlationId}</code>
                  </p>
                ) : null}
              </div>
            ) : null}
            <button type="submit" className="button button-primary button-wide" disabled={busy || !email || !password}>
              {busy ? "Signing in…" : "Sign in"}
            </button>
          </form>
        )}
        {providers.data?.oidc ? (
          <>
            <p className="divider">or</p>
            {/* A top-level navigation: the server redirects to the provider (PKCE). */}
            <a className="button button-wide" href="/api/v1/auth/oidc/authorize">
              Sign in with single sign-on
            </a>
          </>
        ) : null}
      </div>
    </main>
  );
}
