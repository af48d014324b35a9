/**
 * The pool of the active notebook's kernel: the one state the status item
 * and the panel render.
 */
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';
import { Token } from '@lumino/coreutils';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { KernelPoolState, PoolConnection } from './comm';
import { Action } from './protocol';

/** What the UI shows, with an explicit reason when there is no pool. */
export type PoolViewState =
  | { kind: 'no-notebook' }
  | { kind: 'no-kernel'; notebook: string }
  | (KernelPoolState & { notebook: string });

/** The shared model, provided by the `jupyter-sessionpool:model` plugin. */
export interface IPoolModel {
  /** The active notebook's pool state. */
  readonly state: PoolViewState;
  /** Emitted when `state` changes (new snapshot, notebook or kernel switch). */
  readonly changed: ISignal<IPoolModel, void>;
  /** Run an action on the active notebook's pool; rejects with the kernel's error. */
  act(action: Action, session: string): Promise<void>;
}

export const IPoolModel = new Token<IPoolModel>(
  'jupyter-sessionpool:IPoolModel',
  "The pool of the active notebook's kernel."
);

/**
 * Keeps one `PoolConnection` per open notebook's kernel (so a switch shows the
 * right pool at once) and follows the tracker's active notebook.
 */
export class PoolModel implements IPoolModel, IDisposable {
  constructor(tracker: INotebookTracker) {
    this._tracker = tracker;
    tracker.widgetAdded.connect((_, panel) => this._track(panel), this);
    tracker.currentChanged.connect(() => this._refresh(), this);
    tracker.forEach(panel => this._track(panel));
    this._refresh();
  }

  get state(): PoolViewState {
    return this._state;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  act(action: Action, session: string): Promise<void> {
    const panel = this._tracker.currentWidget;
    const connection = panel ? this._connections.get(panel) : undefined;
    if (connection === undefined) {
      return Promise.reject(new Error('no notebook kernel is active'));
    }
    return connection.act(action, session);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._connections.forEach(connection => connection.dispose());
    this._connections.clear();
    Signal.clearData(this);
  }

  /** Follow one notebook's kernel for as long as the notebook is open. */
  private _track(panel: NotebookPanel): void {
    const context = panel.sessionContext;
    const attach = (kernel: Kernel.IKernelConnection | null): void => {
      this._connections.get(panel)?.dispose();
      this._connections.delete(panel);
      if (kernel !== null) {
        const connection = new PoolConnection(kernel);
        connection.stateChanged.connect(() => {
          if (this._tracker.currentWidget === panel) {
            this._refresh();
          }
        }, this);
        this._connections.set(panel, connection);
      }
      this._refresh();
    };
    context.kernelChanged.connect((_, change) => attach(change.newValue), this);
    panel.disposed.connect(() => attach(null), this);
    attach(context.session?.kernel ?? null);
  }

  private _refresh(): void {
    if (this._isDisposed) {
      return;
    }
    const panel = this._tracker.currentWidget;
    const connection = panel ? this._connections.get(panel) : undefined;
    if (panel === null) {
      this._state = { kind: 'no-notebook' };
    } else if (connection === undefined) {
      this._state = { kind: 'no-kernel', notebook: panel.title.label };
    } else {
      this._state = { ...connection.state, notebook: panel.title.label };
    }
    this._changed.emit();
  }

  private _tracker: INotebookTracker;
  private _connections = new Map<NotebookPanel, PoolConnection>();
  private _state: PoolViewState = { kind: 'no-notebook' };
  private _changed = new Signal<this, void>(this);
  private _isDisposed = false;
}
