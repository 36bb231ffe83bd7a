import { Suspense, useEffect, useRef } from "react";
import { Outlet, useLocation } from "react-router";
import { useMe, useSession } from "../../shared/auth/session";
import { Loading } from "../../shared/ui/states";
import { Nav } from "../navigation/Nav";

/** The frame of every signed-in page: skip link, header, navigation, main. */
export function AppLayout() {
  const me = useMe();
  const { signOut } = useSession();
  const location = useLocation();
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);

  // After a client-side navigation, move focus to the new page's heading so
  // keyboard and screen-reader users land on the new content.
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    const heading = main.current?.querySelector<HTMLElement>("h1");
    (heading ?? main.current)?.focus();
  }, [location.pathname]);

  return (
    <div className="app">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <a className="brand" href="/">
          gpuaas
        </a>
        <div className="topbar-user">
          <span>
            {me.user.display_name || me.user.email}
            <span className="muted"> · {me.tenant.name}</span>
            {me.user.role !== "user" ? <span className="role-tag">{me.user.role.replace("_", " ")}</span> : null}
          </span>
          <button type="button" className="button button-small" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <div className="body">
        <Nav />
        <main id="main" ref={main} tabIndex={-1}>
          <Suspense fallback={<Loading label="Loading page" />}>
            <Outlet />
          </Suspense>
        </main>
      </div>
    </div>
  );
}
