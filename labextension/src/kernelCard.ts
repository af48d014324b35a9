/**
 * One kernel of the pool in the side panel: a compact card that fits the
 * narrow side bar, updated in place so its buttons survive redraws.
 */
import {
  closeIcon,
  LabIcon,
  refreshIcon,
  stopIcon
} from '@jupyterlab/ui-components';

import { Action, IKernelStats } from './protocol';

const ACTIONS: { action: Action; label: string; icon: LabIcon }[] = [
  { action: 'interrupt', label: 'Interrupt', icon: stopIcon },
  { action: 'restart', label: 'Restart', icon: refreshIcon },
  { action: 'release', label: 'Release', icon: closeIcon }
];

/** Shown where a value is unknown (a kernel without a process id, say). */
export const DASH = '–';

/** The fields a card shows, each in its own element (class `jsp-Kernel-<name>`). */
const FIELDS = [
  'session',
  'state',
  'busy',
  'runs',
  'memory',
  'kernel',
  'pid',
  'location'
] as const;
type Field = (typeof FIELDS)[number];

/** What a card shows besides its kernel: the same for every card of a pool. */
export interface ICardContext {
  /** The kernel clock now, in seconds. */
  now: number;
  /** An action on this card's session is under way: its buttons are disabled. */
  pending: boolean;
  /** Some kernel of the pool has a process here: show pid and memory columns. */
  showProcess: boolean;
}

/** A card: `data-session`, `data-state` and `data-kernel` mirror the kernel. */
export class KernelCard {
  constructor(onAction: (action: Action, session: string) => void) {
    this._onAction = onAction;
    this.node = document.createElement('li');
    this.node.className = 'jsp-Kernel';
    const head = Format.div('jsp-Kernel-head');
    const stats = Format.div('jsp-Kernel-stats');
    const ids = Format.div('jsp-Kernel-ids');
    this._actions = Format.div('jsp-Kernel-actions');
    const parents: Record<Field, HTMLElement> = {
      session: head,
      state: head,
      busy: stats,
      runs: stats,
      memory: stats,
      kernel: ids,
      pid: ids,
      location: ids
    };
    FIELDS.forEach(field => {
      const span = document.createElement('span');
      span.className = `jsp-Kernel-${field}`;
      parents[field].append(span);
      this._fields[field] = span;
    });
    this.node.append(head, stats, ids, this._actions);
  }

  /** The card's DOM node. */
  readonly node: HTMLLIElement;

  /** Show `kernel` in `context`. */
  update(kernel: IKernelStats, context: ICardContext): void {
    const data = this.node.dataset;
    data.kernel = kernel.kernel_id;
    data.state = kernel.state;
    const busyFor =
      kernel.state === 'busy' && kernel.busy_since !== null
        ? `busy for ${Format.duration(context.now - kernel.busy_since)}`
        : '';
    this._set('session', kernel.session ?? '(anonymous)');
    this._set('state', kernel.state);
    this._set('busy', busyFor);
    const runs = kernel.executions;
    this._set('runs', `${runs} run${runs === 1 ? '' : 's'}`);
    const process = context.showProcess;
    this._set('memory', process ? Format.bytes(kernel.rss) : '');
    this._set('kernel', `kernel ${kernel.kernel_id.slice(0, 8)}`);
    this._set('pid', process ? `pid ${kernel.pid ?? DASH}` : '');
    this._set('location', kernel.location ? `on ${kernel.location}` : '');
    if (kernel.location) {
      this._fields.location.title = kernel.location;
    }
    this._fields.state.className = `jsp-Kernel-state jsp-state-${kernel.state}`;
    const session = kernel.session ?? '';
    if (data.session !== session) {
      data.session = session;
      this._actions.replaceChildren(
        ...(kernel.session === null ? [] : this._buttons(kernel.session))
      );
    }
    this._actions.querySelectorAll('button').forEach(button => {
      button.disabled =
        context.pending ||
        (button.dataset.action === 'interrupt' && kernel.state !== 'busy');
    });
  }

  private _set(field: Field, text: string): void {
    const node = this._fields[field];
    if (node.textContent !== text) {
      node.textContent = text;
    }
  }

  /** Icon-and-text buttons; the accessible name also names the session. */
  private _buttons(session: string): HTMLButtonElement[] {
    return ACTIONS.map(({ action, label, icon }) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'jp-Button jsp-Kernel-action';
      button.dataset.action = action;
      button.title = `${label} session ${session}`;
      button.setAttribute('aria-label', button.title);
      const text = document.createElement('span');
      text.textContent = label;
      const glyph = icon.element({ tag: 'span' });
      glyph.setAttribute('aria-hidden', 'true');
      button.append(glyph, text);
      button.addEventListener('click', () => this._onAction(action, session));
      return button;
    });
  }

  private _onAction: (action: Action, session: string) => void;
  private _actions: HTMLElement;
  private _fields = {} as Record<Field, HTMLElement>;
}

/** Formatting helpers shared with the panel. */
export namespace Format {
  /** A div with a class. */
  export function div(className: string): HTMLDivElement {
    const node = document.createElement('div');
    node.className = className;
    return node;
  }

  /** Seconds as `4.2 s`, `3 min 5 s` or `2 h 1 min`. */
  export function duration(seconds: number): string {
    const s = Math.max(0, seconds);
    if (s < 60) {
      return `${s.toFixed(1)} s`;
    }
    if (s < 3600) {
      return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    }
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  /** Bytes as MiB, or `memory –` when unknown. */
  export function bytes(n: number | null): string {
    return n === null ? `memory ${DASH}` : `${(n / 2 ** 20).toFixed(1)} MiB`;
  }
}
