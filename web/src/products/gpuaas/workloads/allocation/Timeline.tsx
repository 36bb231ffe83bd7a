import { formatDateTime } from "../../../../shared/i18n/format";
import { statusLabel, type TimelineItem } from "./model";

/** The lifecycle of an allocation: what happened (who, why, when) and what is still expected. */
export function Timeline({ items }: { items: TimelineItem[] }) {
  return (
    <ol className="timeline" aria-label="Lifecycle" data-testid="allocation-timeline">
      {items.map((item) =>
        item.done ? (
          <li key={item.key} data-status={item.status}>
            <strong>{statusLabel(item.status)}</strong>
            {item.at ? (
              <>
                {" · "}
                <time dateTime={item.at}>{formatDateTime(item.at)}</time>
              </>
            ) : null}
            {item.actor ? <div className="muted">By {item.actor}</div> : null}
            {item.reason ? <div>Reason: {item.reason}</div> : null}
            {item.correlationId ? (
              <div className="muted">
                Correlation id: <code>{item.correlationId}</code>
              </div>
            ) : null}
          </li>
        ) : (
          <li key={item.key} className="pending" data-status={item.status}>
            <strong>{statusLabel(item.status)}</strong> <span className="muted">— pending</span>
          </li>
        ),
      )}
    </ol>
  );
}
