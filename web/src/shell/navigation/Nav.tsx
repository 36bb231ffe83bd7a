import { NavLink } from "react-router";
import { isBillingOperator, isOperator, useMe } from "../../shared/auth/session";

const USER_LINKS = [
  { to: "/", label: "Dashboard", end: true },
  { to: "/capacity", label: "Capacity" },
  { to: "/allocations", label: "Allocations" },
  { to: "/ssh-keys", label: "SSH keys" },
  { to: "/billing", label: "Billing" },
];

const OPERATOR_LINKS = [
  { to: "/admin/users", label: "Users" },
  { to: "/admin/fleet", label: "Fleet" },
  { to: "/admin/allocations", label: "All allocations" },
  { to: "/admin/audit", label: "Audit log" },
  { to: "/admin/reconciliation", label: "Reconciliation" },
];

export function Nav() {
  const me = useMe();
  return (
    <nav className="nav" aria-label="Main">
      <ul>
        {USER_LINKS.map((link) => (
          <li key={link.to}>
            <NavLink to={link.to} end={link.end}>
              {link.label}
            </NavLink>
          </li>
        ))}
      </ul>
      {isBillingOperator(me) ? (
        <>
          <h2 className="nav-heading">Operator</h2>
          <ul>
            {isOperator(me)
              ? OPERATOR_LINKS.map((link) => (
                  <li key={link.to}>
                    <NavLink to={link.to}>{link.label}</NavLink>
                  </li>
                ))
              : null}
            <li>
              <NavLink to="/admin/payments">Payment sessions</NavLink>
            </li>
          </ul>
        </>
      ) : null}
    </nav>
  );
}
