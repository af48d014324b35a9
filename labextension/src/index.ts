/**
 * JupyterLab and Notebook 7 plugins for jupyter_sessionpool: a shared model of
 * the active notebook's pool, a status-bar item (where there is a status bar)
 * and a side panel with a command-palette entry.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { IPoolModel, PoolModel } from './model';
import { PoolPanel } from './panel';
import { PoolStatusItem } from './statusItem';

const OPEN_PANEL = 'jupyter-sessionpool:open-panel';

const modelPlugin: JupyterFrontEndPlugin<IPoolModel> = {
  id: 'jupyter-sessionpool:model',
  description: "Follows the active notebook kernel's pool over a comm.",
  autoStart: true,
  requires: [INotebookTracker],
  provides: IPoolModel,
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker) =>
    new PoolModel(tracker)
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-sessionpool:status-item',
  description:
    'Shows "Pool 2/4 busy · 1 waiting" in the status bar, in apps that have one (Notebook 7 has none).',
  autoStart: true,
  requires: [IPoolModel],
  optional: [IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    model: IPoolModel,
    statusBar: IStatusBar | null
  ) => {
    if (statusBar === null) {
      return;
    }
    const item = new PoolStatusItem(model, () => {
      if (app.commands.hasCommand(OPEN_PANEL)) {
        void app.commands.execute(OPEN_PANEL);
      }
    });
    statusBar.registerStatusItem('jupyter-sessionpool:status-item', {
      item,
      align: 'left',
      rank: 100,
      isActive: () => item.isActive,
      activeStateChanged: model.changed
    });
  }
};

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-sessionpool:panel',
  description:
    'A side panel with the kernels and sessions of the pool, and the command that shows it.',
  autoStart: true,
  requires: [IPoolModel],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    model: IPoolModel,
    palette: ICommandPalette | null
  ) => {
    const panel = new PoolPanel(model);
    app.shell.add(panel, 'right', { rank: 1000 });
    app.commands.addCommand(OPEN_PANEL, {
      label: 'Show Kernel Pool Panel',
      caption: "The kernels and sessions of the active notebook's pool",
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: OPEN_PANEL, category: 'Kernel Pool' });
  }
};

export default [modelPlugin, statusPlugin, panelPlugin];
