import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Link, useSearchParams } from "react-router";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { formatDateTime, formatMoney } from "../../../shared/i18n/format";
import { Field } from "../../../shared/ui/Field";
import { Page, StatusBadge } from "../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../shared/ui/states";
import { skuIndex, useSkus } from "../compute/catalog";
import { ALLOCATION_STATUSES, allocationLabel, isTransitional, statusLabel, type AllocationStatus } from "./allocation/model";
import { ALLOCATIONS_KEY } from "./allocation/queries";

const PAGE_SIZE = 50;
const POLL_MS = 5_000;

function parseStatus(value: string | null): AllocationStatus | "" {
  return value !== null && (ALLOCATION_STATUSES as readonly string[]).includes(value) ? (value as AllocationStatus) : "";
}

export default function AllocationsPage() {
  const api = useApi();
  const [params, setParams] = useSearchParams();
  const status = parseStatus(params.get("status"));
  const pager = useCursorPager();
  const skus = useSkus();
  const index = skuIndex(skus.data?.items ?? []);

  const list = useQuery({
    queryKey: [...ALLOCATIONS_KEY, "list", status, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/allocations", {
          params: { query: { status: status === "" ? undefined : status, cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
    // Poll while the platform is still working on something listed.
    refetchInterval: (query) => (query.state.data?.items.some((a) => isTransitional(a.status)) ? POLL_MS : false),
  });

  function changeStatus(next: string) {
    pager.reset();
    setParams(
      (current) => {
        const updated = new URLSearchParams(current);
        if (next === "") updated.delete("status");
        else updated.set("status", next);
        return updated;
      },
      { replace: true },
    );
  }

  const polling = list.data?.items.some((a) => isTransitional(a.status)) ?? false;

  return (
    <Page
      title="Allocations"
      actions={
        <Link className="button button-primary" to="/allocations/new">
          Create allocation
        </Link>
      }
    >
      <div className="toolbar">
        <Field label="Status">
          {(props) => (
            <select {...props} value={status} onChange={(event) => changeStatus(event.target.value)}>
              <option value="">All statuses</option>
              {ALLOCATION_STATUSES.map((s) => (
                <option key={s} value={s}>
                  {statusLabel(s)}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      <QueryView
        query={list}
        loadingLabel="Loading allocations"
        isEmpty={(data) => data.items.length === 0 && pager.page === 1}
        empty={
          status === "" ? (
            <Empty title="No allocations yet">
              <p>
                See what is free on the <Link to="/capacity">Capacity</Link> page, then create one.
              </p>
            </Empty>
          ) : (
            <Empty title={`No allocations with status “${statusLabel(status)}”`}>
              <p>Choose another status, or all statuses.</p>
            </Empty>
          )
        }
      >
        {(data) => (
          <>
            <div className="table-wrap" aria-busy={list.isFetching && list.isPlaceholderData}>
              <table data-testid="allocations-table">
                <caption className="visually-hidden">
                  Your allocations{status ? `, status ${statusLabel(status)}` : ""}, newest first, page {pager.page}
                </caption>
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
                  {data.items.map((a) => (
                    <tr key={a.id} data-allocation-id={a.id} data-status={a.status}>
                      <td>
                        <Link to={`/allocations/${encodeURIComponent(a.id)}`}>{allocationLabel(a)}</Link>
                        {a.name ? (
                          <div className="muted">
                            <code>{a.id}</code>
                          </div>
                        ) : null}
                      </td>
                      <td>{index.get(a.sku_id)?.display_name ?? a.sku_id}</td>
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
            {data.items.length === 0 ? <p className="muted">No more allocations.</p> : null}
            <Pager pager={pager} nextCursor={data.next_cursor} label="Allocations" />
            {polling ? <p className="muted">Some allocations are changing; this list updates every {POLL_MS / 1000} s.</p> : null}
          </>
        )}
      </QueryView>
    </Page>
  );
}
