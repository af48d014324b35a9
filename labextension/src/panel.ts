/**
 * The side panel: every kernel of the active notebook's pool, live, with
 * per-session actions.
 */
import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { IPoolModel, PoolViewState } from './model';
import { Action, IKernelStats } from './protocol';

const COLUMNS = [
  'Kernel',
  'PID',
  'State',
  'Session',
  'Busy for',
  'Runs',
  'Memory',
  'Actions'
];
const ACTIONS: { action: Action; label: string }[] = [
  { action: 'interrupt', label: 'Interrupt' },
  { action: 'restart', label: 'Restart' },
  { action: 'release', label: 'Release' }
];

/** The panel widget; it renders the model and redraws "busy for" each second. */
export class PoolPanel extends Widget {
  constructor(model: IPoolModel) {
    super();
    this.id = 'jupyter-sessionpool-panel';
    this.title.label = 'Kernel Pool';
    this.title.caption = "The active notebook's kernel pool";
    this.addClass('jsp-Panel');
    this._model = model;
    const heading = Private.element('h2', 'jsp-Panel-heading', 'Kernel pool');
    this._summary = Private.element('p', 'jsp-Panel-summary');
    this._table = Private.table();
    this._tbody = this._table.tBodies[0];
    this._waiting = Private.element('p', 'jsp-Panel-waiting');
    this._counters = Private.element('p', 'jsp-Panel-counters');
    this._error = Private.element('p', 'jsp-Panel-error');
    this._error.setAttribute('role', 'alert');
    this.node.append(
      heading,
      this._summary,
      this._table,
      this._waiting,
      this._counters,
      this._error
    );
    model.changed.connect(() => this._render(), this);
    this._render();
  }

  dispose(): void {
    this._stopTicking();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    this._render();
  }

  protected onAfterHide(msg: Message): void {
    this._stopTicking();
  }

  private _render(): void {
    const state = this._model.state;
    this._summary.textContent = Private.summary(state);
    if (state.kind !== 'pool') {
      this._table.hidden = true;
      this._waiting.textContent = '';
      this._counters.textContent = '';
      this._rows.forEach(row => row.remove());
      this._rows.clear();
      this._stopTicking();
      return;
    }
    const pool = state.snapshot.pool;
    const now = state.snapshot.time + (Date.now() - state.receivedAt) / 1000;
    this._table.hidden = false;
    this._renderRows(pool.kernels, now);
    this._waiting.textContent = pool.waiting.length
      ? 'Waiting: ' +
        pool.waiting
          .map(
            w =>
              `${w.session ?? '(any)'} for ${Private.duration(now - w.since)}`
          )
          .join(', ')
      : '';
    this._counters.textContent = Object.entries(pool.counters)
      .map(([name, value]) => `${name} ${value}`)
      .join(' · ');
    const busy = pool.kernels.some(k => k.state === 'busy');
    if (busy && this.isVisible) {
      this._startTicking();
    } else {
      this._stopTicking();
    }
  }

  /** Update rows in place (keyed by kernel id) so buttons survive redraws. */
  private _renderRows(kernels: IKernelStats[], now: number): void {
    const seen = new Set<string>();
    kernels.forEach((kernel, index) => {
      seen.add(kernel.kernel_id);
      let row = this._rows.get(kernel.kernel_id);
      if (row === undefined) {
        row = Private.row(COLUMNS.length);
        this._rows.set(kernel.kernel_id, row);
      }
      this._fillRow(row, kernel, now);
      if (this._tbody.children[index] !== row) {
        this._tbody.insertBefore(row, this._tbody.children[index] ?? null);
      }
    });
    this._rows.forEach((row, id) => {
      if (!seen.has(id)) {
        row.remove();
        this._rows.delete(id);
      }
    });
  }

  private _fillRow(
    row: HTMLTableRowElement,
    kernel: IKernelStats,
    now: number
  ): void {
    const cells = row.cells;
    row.dataset.kernel = kernel.kernel_id;
    row.dataset.state = kernel.state;
    const busyFor =
      kernel.state === 'busy' && kernel.busy_since !== null
        ? Private.duration(now - kernel.busy_since)
        : '';
    const texts = [
      kernel.kernel_id.slice(0, 8),
      `${kernel.pid ?? ''}`,
      kernel.state,
      kernel.session ?? '',
      busyFor,
      `${kernel.executions}`,
      Private.bytes(kernel.rss)
    ];
    texts.forEach((text, i) => {
      if (cells[i].textContent !== text) {
        cells[i].textContent = text;
      }
    });
    cells[2].className = `jsp-state jsp-state-${kernel.state}`;
    const session = kernel.session ?? '';
    if ((row.dataset.session ?? '') !== session || !row.dataset.actions) {
      row.dataset.session = session;
      row.dataset.actions = 'yes';
      cells[COLUMNS.length - 1].replaceChildren(
        ...(kernel.session === null ? [] : this._buttons(kernel.session))
      );
    }
    const pending = this._pending.has(session);
    row
      .querySelectorAll('button')
      .forEach(button => (button.disabled = pending));
  }

  private _buttons(session: string): HTMLButtonElement[] {
    return ACTIONS.map(({ action, label }) => {
      const button = Private.element('button', 'jp-Button jsp-Panel-action');
      button.textContent = label;
      button.setAttribute('aria-label', `${label} session ${session}`);
      button.addEventListener('click', () => void this._act(action, session));
      return button;
    });
  }

  private async _act(action: Action, session: string): Promise<void> {
    this._pending.add(session);
    this._error.textContent = '';
    this._render();
    try {
      await this._model.act(action, session);
    } catch (error) {
      this._error.textContent = `${action} ${session}: ${(error as Error).message}`;
    } finally {
      this._pending.delete(session);
      this._render();
    }
  }

  private _startTicking(): void {
    if (this._ticker === null) {
      this._ticker = window.setInterval(() => this._render(), 1000);
    }
  }

  private _stopTicking(): void {
    if (this._ticker !== null) {
      window.clearInterval(this._ticker);
      this._ticker = null;
    }
  }

  private _model: IPoolModel;
  private _summary: HTMLElement;
  private _table: HTMLTableElement;
  private _tbody: HTMLTableSectionElement;
  private _waiting: HTMLElement;
  private _counters: HTMLElement;
  private _error: HTMLElement;
  private _rows = new Map<string, HTMLTableRowElement>();
  private _pending = new Set<string>();
  private _ticker: number | null = null;
}

namespace Private {
  /** Create an element with a class and optional text. */
  export function element<K extends keyof HTMLElementTagNameMap>(
    tag: K,
    className: string,
    text = ''
  ): HTMLElementTagNameMap[K] {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  }

  /** The kernels table, with its header and an empty body. */
  export function table(): HTMLTableElement {
    const node = element('table', 'jsp-Panel-table');
    const header = node.createTHead().insertRow();
    COLUMNS.forEach(name => {
      const th = element('th', '', name);
      th.scope = 'col';
      header.append(th);
    });
    node.createTBody();
    return node;
  }

  /** An empty row of `n` cells. */
  export function row(n: number): HTMLTableRowElement {
    const node = document.createElement('tr');
    for (let i = 0; i < n; i++) {
      node.insertCell();
    }
    return node;
  }

  /** One line about the state, naming the notebook. */
  export function summary(state: PoolViewState): string {
    switch (state.kind) {
      case 'no-notebook':
        return 'No notebook is active.';
      case 'no-kernel':
        return `${state.notebook}: no kernel.`;
      case 'unavailable':
        return `${state.notebook}: no pool in this kernel. Run %load_ext jupyter_sessionpool to start one.`;
      case 'empty':
        return `${state.notebook}: no pool yet; the first %%pool cell starts it.`;
      case 'pool': {
        const pool = state.snapshot.pool;
        const count = (s: string): number =>
          pool.kernels.filter(k => k.state === s).length;
        return (
          `${state.notebook}: ${pool.kernel_name} pool, ` +
          `${count('busy')}/${pool.max_kernels} busy, ${count('idle')} idle, ` +
          `${count('starting')} starting, ${pool.waiting.length} waiting` +
          (pool.closed ? ' (closed)' : '')
        );
      }
    }
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

  /** Bytes as MiB, or empty when unknown. */
  export function bytes(n: number | null): string {
    return n === null ? '' : `${(n / 2 ** 20).toFixed(1)} MiB`;
  }
}
