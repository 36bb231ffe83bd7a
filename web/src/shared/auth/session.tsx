import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { useQueryClient } from "@tanstack/react-query";
import type { components } from "../api/schema";
import { useApiContext } from "../data/ApiContext";
import { retryDelay, sessionLogin, sessionLogout, sessionOidcExchange, unwrap } from "../data/client";
import { describeError, toApiError } from "../data/errors";

export type Me = components["schemas"]["Me"];

type SessionState =
  | { status: "starting" }
  | { status: "signed-out"; reason?: string }
  | { status: "signed-in"; me: Me };

interface SessionContextValue {
  state: SessionState;
  signIn: (email: string, password: string) => Promise<void>;
  completeOidc: (code: string, state: string) => Promise<void>;
  signOut: () => Promise<void>;
  reloadMe: () => Promise<void>;
}

const SessionContext = createContext<SessionContextValue | null>(null);

/** Seconds before expiry at which the access token is renewed in the background. */
const REFRESH_MARGIN_SECONDS = 60;

/**
 * The signed-in person. On start it tries the refresh cookie (a reload keeps the
 * session without any token in storage), then renews the access token shortly
 * before it expires.
 */
export function SessionProvider({ children }: { children: ReactNode }) {
  const { api, tokens, baseFetch } = useApiContext();
  const queryClient = useQueryClient();
  const [state, setState] = useState<SessionState>({ status: "starting" });

  const loadMe = useCallback(async () => {
    const me = await unwrap(api.GET("/api/v1/users/me"));
    setState({ status: "signed-in", me });
  }, [api]);

  // Resume the session from the refresh cookie. A failure that is not a refusal
  // (network, 5xx, 429) says what happened and tries again after the server's delay.
  useEffect(() => {
    let cancelled = false;
    let timer = 0;
    const attempt = (tries: number) => {
      tokens
        .refresh()
        .then(async (ok) => {
          if (cancelled) return;
          if (ok) await loadMe();
          else setState({ status: "signed-out" });
        })
        .catch((error: unknown) => {
          if (cancelled) return;
          const apiError = toApiError(error);
          const { title, advice } = describeError(apiError);
          setState({ status: "signed-out", reason: `${title}. ${advice}` });
          if (tries < 5) timer = window.setTimeout(() => attempt(tries + 1), retryDelay(tries, apiError));
        });
    };
    attempt(0);
    return () => {
      cancelled = true;
      window.clearTimeout(timer);
    };
  }, [tokens, loadMe]);

  useEffect(
    () =>
      tokens.onChange((signedIn) => {
        if (!signedIn) {
          queryClient.clear();
          setState({ status: "signed-out", reason: "Your session has ended. Sign in again." });
        }
      }),
    [tokens, queryClient],
  );

  // Silent renewal: a timer that refreshes before expiry; a failed renewal is left
  // to the 401 path of the next request.
  useEffect(() => {
    if (state.status !== "signed-in") return undefined;
    let timer = 0;
    const schedule = () => {
      const wait = Math.max(5, tokens.secondsLeft - REFRESH_MARGIN_SECONDS) * 1000;
      timer = window.setTimeout(() => {
        tokens
          .refresh()
          .then((ok) => ok && schedule())
          .catch(() => (timer = window.setTimeout(schedule, 10_000)));
      }, wait);
    };
    schedule();
    return () => window.clearTimeout(timer);
  }, [state.status, tokens]);

  const value = useMemo<SessionContextValue>(
    () => ({
      state,
      signIn: async (email, password) => {
        tokens.accept(await sessionLogin(baseFetch, email, password));
        await loadMe();
      },
      completeOidc: async (code, oidcState) => {
        tokens.accept(await sessionOidcExchange(baseFetch, code, oidcState));
        await loadMe();
      },
      signOut: async () => {
        try {
          await sessionLogout(baseFetch);
        } finally {
          tokens.clear();
          queryClient.clear();
          setState({ status: "signed-out" });
        }
      },
      reloadMe: loadMe,
    }),
    [state, tokens, baseFetch, loadMe, queryClient],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionContextValue {
  const value = useContext(SessionContext);
  if (value === null) throw new Error("useSession outside SessionProvider");
  return value;
}

/** The signed-in person; only for pages behind the sign-in gate. */
export function useMe(): Me {
  const { state } = useSession();
  if (state.status !== "signed-in") throw new Error("useMe while signed out");
  return state.me;
}

export function isOperator(me: Me): boolean {
  return me.user.role === "admin";
}

export function isBillingOperator(me: Me): boolean {
  return me.user.role === "admin" || me.user.role === "billing_operator";
}
