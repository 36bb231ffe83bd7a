import { Link } from "react-router";
import { formatDateTime, formatMoney } from "../../../../shared/i18n/format";
import { StatusBadge } from "../../../../shared/ui/Page";
import { allocationLabel, type Allocation } from "./model";

/**
 * Allocations as a table: name (linked, with the id under a name), SKU, GPUs,
 * status, created, hourly and accrued cost.
 */
export function AllocationTable({
  caption,
  items,
  skuName,
  testId,
  busy,
}: {
  caption: string;
  items: Allocation[];
  skuName: (id: string) => string;
  testId?: string;
  busy?: boolean;
}) {
  return (
    <div className="table-wrap" aria-busy={busy}>
      <table data-testid={testId}>
        <caption className="visually-hidden">{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">SKU</th>
            <th scope="col" className="num">
              GPUs
            </th>
            <th scope="col">Status</th>
            <th scope="col">Created</th>
            <th scope="col" className="num">
              Hourly cost
            </th>
            <th scope="col" className="num">
              Accrued cost
            </th>
          </tr>
        </thead>
        <tbody>
          {items.map((a) => (
            <tr key={a.id} data-allocation-id={a.id} data-status={a.status}>
              <td>
                <Link to={`/allocations/${encodeURIComponent(a.id)}`}>{allocationLabel(a)}</Link>
                {a.name ? (
                  <div className="muted">
                    <code>{a.id}</code>
                  </div>
                ) : null}
              </td>
              <td>{skuName(a.sku_id)}</td>
              <td className="num">{a.gpu_count}</td>
              <td>
                <StatusBadge status={a.status} />
              </td>
              <td>{formatDateTime(a.created_at)}</td>
              <td className="num">{formatMoney(a.hourly_cost_minor, a.currency)}</td>
              <td className="num">{formatMoney(a.accrued_cost_minor, a.currency)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
