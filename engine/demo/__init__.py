"""``arsel demo``: a synthetic RGB-D table scene, simulated gaze, the stream engine and 3D lifting.

Modules (import them directly; open3d is imported where it is used):

* ``scene``: ``TableScene`` (Open3D ``RaycastingScene``), ``realsense_noise``, ``look_at``, ``orbit_poses``
* ``engine.gaze.simulate``: ``simulate_gaze`` (fixations on each object in turn, saccades, jitter, a blink)
* ``source``: ``SyntheticRGBDSource``, ``open_realsense``, ``OdometryPoses``
* ``pipeline``: ``DemoConfig``, ``run_demo`` - engine, lifting, TSDF fusion, ``summary.json``
* ``objects``: ``ObjectLog`` (per-object frames, evenly thinned), ``upright_box``, ``largest_component``
* ``overlay``: the overlay video with HUD and gaze dot
* ``cli``: the ``arsel demo`` verb
"""
