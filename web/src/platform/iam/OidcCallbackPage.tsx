import { useEffect, useRef, useState } from "react";
import { useNavigate } from "react-router";
import { useSession } from "../../shared/auth/session";
import { ErrorPanel, Loading } from "../../shared/ui/states";

/**
 * Where the identity provider sends the browser back. The one-time code is removed
 * from the address bar before anything else, then exchanged for a session.
 */
export function OidcCallbackPage() {
  const { completeOidc } = useSession();
  const navigate = useNavigate();
  const [error, setError] = useState<unknown>(null);
  const started = useRef(false);

  useEffect(() => {
    if (started.current) return;
    started.current = true;
    const params = new URLSearchParams(window.location.search);
    const code = params.get("code");
    const state = params.get("state");
    const providerError = params.get("error_description") ?? params.get("error");
    window.history.replaceState(null, "", "/auth/callback");
    if (providerError || !code || !state) {
      setError(new Error(providerError ?? "The sign-in provider did not return a code. Start again from the sign-in page."));
      return;
    }
    completeOidc(code, state)
      .then(() => navigate("/", { replace: true }))
      .catch(setError);
  }, [completeOidc, navigate]);

  return (
    <main id="main" className="signin">
      <div className="signin-card">
        <h1>Signing you in</h1>
        {error ? (
          <>
            <ErrorPanel error={error} />
            <a href="/">Back to sign in</a>
          </>
        ) : (
          <Loading label="Completing sign-in" />
        )}
      </div>
    </main>
  );
}
