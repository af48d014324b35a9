/**
 * The side panel: every kernel of the active notebook's pool, live, with
 * per-session actions.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { Format, KernelCard } from './kernelCard';
import { IPoolModel, PoolViewState } from './model';
import { Action, IKernelStats, IPoolStats } from './protocol';

/** The panel widget; it renders the model and redraws "busy for" each second. */
export class PoolPanel extends Widget {
  constructor(model: IPoolModel) {
    super();
    this.id = 'jupyter-sessionpool-panel';
    this.title.label = 'Kernel Pool';
    // Notebook 7 names its "Show …" menu and palette entries after the caption.
    this.title.caption = 'Kernel Pool';
    this.addClass('jsp-Panel');
    this._model = model;
    const heading = Private.element('h2', 'jsp-Panel-heading', 'Kernel pool');
    this._summary = Private.element('p', 'jsp-Panel-summary');
    this._list = Private.element('ul', 'jsp-Panel-kernels');
    this._list.setAttribute('aria-label', 'Kernels');
    this._empty = Private.element('p', 'jsp-Panel-empty');
    this._waiting = Private.element('p', 'jsp-Panel-waiting');
    this._counters = Private.element('p', 'jsp-Panel-counters');
    this._error = Private.element('p', 'jsp-Panel-error');
    this._error.setAttribute('role', 'alert');
    this.node.append(
      heading,
      this._summary,
      this._error,
      this._list,
      this._empty,
      this._waiting,
      this._counters
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
      this._renderCards([], 0);
      this._empty.textContent = '';
      this._waiting.textContent = '';
      this._counters.textContent = '';
      this._stopTicking();
      return;
    }
    const pool = state.snapshot.pool;
    const now = state.snapshot.time + (Date.now() - state.receivedAt) / 1000;
    this._renderCards(pool.kernels, now);
    this._empty.textContent = pool.kernels.length
      ? ''
      : Private.noKernels(pool);
    this._waiting.textContent = pool.waiting.length
      ? 'Waiting: ' +
        pool.waiting
          .map(w => `${w.session ?? '(any)'} ${Format.duration(now - w.since)}`)
          .join(', ')
      : '';
    this._counters.textContent = Object.entries(pool.counters)
      .map(([name, value]) => `${name.replace('_', ' ')} ${value}`)
      .join(' · ');
    const busy = pool.kernels.some(k => k.state === 'busy');
    if (busy && this.isVisible) {
      this._startTicking();
    } else {
      this._stopTicking();
    }
  }

  /** Update cards in place (keyed by kernel id), in the snapshot's order. */
  private _renderCards(kernels: IKernelStats[], now: number): void {
    const seen = new Set<string>();
    const showProcess = kernels.some(k => k.pid !== null);
    kernels.forEach((kernel, index) => {
      seen.add(kernel.kernel_id);
      let card = this._cards.get(kernel.kernel_id);
      if (card === undefined) {
        card = new KernelCard((action, session) => {
          void this._act(action, session);
        });
        this._cards.set(kernel.kernel_id, card);
      }
      card.update(kernel, {
        now,
        pending: this._pending.has(kernel.session ?? ''),
        showProcess
      });
      if (this._list.children[index] !== card.node) {
        this._list.insertBefore(card.node, this._list.children[index] ?? null);
      }
    });
    this._cards.forEach((card, id) => {
      if (!seen.has(id)) {
        card.node.remove();
        this._cards.delete(id);
      }
    });
  }

  private async _act(action: Action, session: string): Promise<void> {
    if (action !== 'interrupt' && !(await Private.confirm(action, session))) {
      return;
    }
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
  private _list: HTMLUListElement;
  private _empty: HTMLElement;
  private _waiting: HTMLElement;
  private _counters: HTMLElement;
  private _error: HTMLElement;
  private _cards = new Map<string, KernelCard>();
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

  /** Ask before an action that loses the session's state; true to go ahead. */
  export async function confirm(
    action: 'restart' | 'release',
    session: string
  ): Promise<boolean> {
    const release = action === 'release';
    const result = await showDialog({
      title: `${release ? 'Release' : 'Restart'} session ${session}?`,
      body:
        `Every variable and import of session ${session} is lost` +
        (release
          ? ': its kernel shuts down, and the next %%pool cell on it starts a new one.'
          : ': its next cell runs on a fresh kernel.'),
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: release ? 'Release' : 'Restart' })
      ]
    });
    return result.button.accept;
  }

  /** What is true when the pool holds no kernel, and what starts one. */
  export function noKernels(pool: IPoolStats): string {
    if (pool.closed) {
      return 'No kernels: the pool is shut down.';
    }
    const counters = pool.counters;
    if (!counters.started) {
      return 'No kernels yet: the first %%pool cell starts one.';
    }
    const why = [
      counters.released ? 'sessions released' : '',
      counters.died ? 'kernels died' : ''
    ].filter(Boolean);
    return (
      `No kernels running${why.length ? ': ' + why.join(', ') : ''}; ` +
      'the next %%pool cell starts one.'
    );
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
}
