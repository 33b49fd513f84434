"""Recipes: what a command does from end to end, composed from the layers below (data, model, train, eval,
explain). Each module's `main` is what cli.py calls once it has parsed the flags: it runs the recipe, prints
what the command reports and returns the exit status; the `run_*` functions are the same work as a function
that returns its numbers.

    world.py              ensure_world: config's world.dir, else the built-in world generated once into OUT/world
    train.py              `mmdialog train`: the world or data.train_file -> train() -> OUT/checkpoint
    pretrain.py           `mmdialog pretrain`: pairs -> the objective mixture -> a checkpoint for train.init_from
    demo.py               `mmdialog demo`: world, train within eval.demo_minutes, evaluate, chat, explain, report
    experiment.py         `mmdialog experiment multiturn`: training variants x context policies, over seeds
    fusion_experiment.py  `mmdialog experiment fusion`: the six fusions on the same world and budget
    data_check.py         `mmdialog data check`: dataset files checked as training reads them
"""
