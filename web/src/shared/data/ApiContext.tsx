import { createContext, useContext, useMemo, type ReactNode } from "react";
import { MutationCache, QueryCache, QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { TokenStore, authenticatedFetch, createApi, retryDelay, shouldRetry, type Api } from "./client";

interface ApiContextValue {
  api: Api;
  tokens: TokenStore;
  /** The unauthenticated fetch, for the session endpoints. */
  baseFetch: typeof fetch;
  /** A fetch that authenticates like the API client, for exports. */
  authFetch: typeof fetch;
}

const ApiContext = createContext<ApiContextValue | null>(null);

export function ApiProvider({ children }: { children: ReactNode }) {
  const value = useMemo(() => {
    const baseFetch: typeof fetch = (input, init) => fetch(input, init);
    const tokens = new TokenStore(baseFetch);
    return { api: createApi(tokens, baseFetch), tokens, baseFetch, authFetch: authenticatedFetch(tokens, baseFetch) };
  }, []);
  const queryClient = useMemo(
    () =>
      new QueryClient({
        queryCache: new QueryCache(),
        mutationCache: new MutationCache(),
        defaultOptions: {
          queries: { retry: shouldRetry, retryDelay, staleTime: 5_000, refetchOnWindowFocus: true },
          mutations: { retry: false },
        },
      }),
    [],
  );
  return (
    <ApiContext.Provider value={value}>
      <QueryClientProvider client={queryClient}>{children}</QueryClientProvider>
    </ApiContext.Provider>
  );
}

export function useApiContext(): ApiContextValue {
  const value = useContext(ApiContext);
  if (value === null) throw new Error("useApi outside ApiProvider");
  return value;
}

/** The typed API client; wrap calls in `unwrap` to get data or an ApiError. */
export function useApi(): Api {
  return useApiContext().api;
}
