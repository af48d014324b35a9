/**
 * The status-bar item: `Pool 2/4 busy · 1 waiting` for the active notebook.
 */
import { Widget } from '@lumino/widgets';

import { IPoolModel, PoolViewState } from './model';

/** The status text for a state, or null when the item should hide. */
export function statusText(state: PoolViewState): string | null {
  switch (state.kind) {
    case 'empty':
      return 'No pool';
    case 'pool': {
      const pool = state.snapshot.pool;
      if (pool.closed) {
        return 'Pool closed';
      }
      const busy = pool.kernels.filter(k => k.state === 'busy').length;
      const waiting = pool.waiting.length;
      return (
        `Pool ${busy}/${pool.max_kernels} busy` +
        (waiting > 0 ? ` · ${waiting} waiting` : '')
      );
    }
    default:
      return null; // no notebook, no kernel, or a kernel without the extension
  }
}

/** A text item that mirrors the model; clicking it calls `onClick`. */
export class PoolStatusItem extends Widget {
  constructor(model: IPoolModel, onClick: () => void) {
    super();
    this.id = 'jupyter-sessionpool-status';
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('jsp-StatusItem');
    this.node.title = 'Kernel pool of this notebook: click to open the panel';
    this.node.addEventListener('click', onClick);
    this._model = model;
    model.changed.connect(this._render, this);
    this._render();
  }

  /** Whether the status bar should show the item. */
  get isActive(): boolean {
    return statusText(this._model.state) !== null;
  }

  private _render(): void {
    this.node.textContent = statusText(this._model.state) ?? '';
  }

  private _model: IPoolModel;
}
